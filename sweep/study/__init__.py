"""The study: the search space (space), the loop (orchestrator), the one writer (writer, spool,
storage), the fleet's owners and reaping (fleet), and the verification of the front (verify)."""
