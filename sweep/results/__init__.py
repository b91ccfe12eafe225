"""The views of a study: its front and the export policy (front), the deployable export, the
portable table, the HTML report and its timelines, and the terminal's tables and progress."""
