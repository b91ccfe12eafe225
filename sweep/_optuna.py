"""The few places where sweep needs Optuna's private API, in one module.

Optuna's ask/tell API has no public way to name a trial's storage id, to write a
system attribute, to fail a trial that another process asked, or to list the trials
whose heartbeat went stale without also failing them. If Optuna changes these, this
is the one file to mend.
"""

from __future__ import annotations

from typing import Any


def quiet() -> None:
    """Keep Optuna's log and its warnings about sweep's deliberate choices off the user's terminal:
    heartbeats are an experimental argument, and sweep records them itself around ask/tell."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def trial_id(trial: Any) -> int:
    """The storage id of a ``Trial`` or ``FrozenTrial`` (unique in the database, unlike its number)."""
    return int(trial._trial_id)


def study_id(study: Any) -> int:
    return int(study._study_id)


def storage(study: Any) -> Any:
    return study._storage


def set_constraints(study: Any, trial: Any, values: list[float]) -> None:
    """Optuna 5 reads constraints from the system attribute ``constraints`` as well as from
    ``Trial.set_constraint``'s named keys, but optuna-dashboard reads only the list."""
    study._storage.set_trial_system_attr(trial_id(trial), "constraints", values)


def stale_trial_ids(study: Any) -> list[int]:
    """RUNNING trials whose heartbeat is older than the storage's grace period (without failing them)."""
    st = study._storage
    if st.get_heartbeat_interval() is None:
        return []
    return list(st._get_stale_trial_ids(study._study_id))


def first_heartbeat(study: Any, tid: int) -> None:
    """Give a RUNNING trial a heartbeat at the database's clock unless it has one already (nothing
    where the storage keeps no heartbeats).

    A trial that carries no owner yet is aged by this beat, as an owned one is by its owner's, and
    never by Optuna's ``datetime_start``: that is the asker's local clock, in its own time zone.
    """
    import importlib

    import sqlalchemy as sa

    st = study._storage
    if st.get_heartbeat_interval() is None:
        return
    backend = getattr(st, "_backend", st)
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    dialect = backend.engine.name
    if dialect not in ("sqlite", "postgresql"):
        with _create_scoped_session(backend.scoped_session) as session:
            if models.TrialHeartbeatModel.where_trial_id(tid, session) is not None:
                return
        st.record_heartbeat(tid)
        return
    table = models.TrialHeartbeatModel.__table__
    stmt = importlib.import_module(f"sqlalchemy.dialects.{dialect}").insert(table).values(
        trial_id=tid, heartbeat=sa.func.current_timestamp()).on_conflict_do_nothing(index_elements=[table.c.trial_id])
    with _create_scoped_session(backend.scoped_session) as session:
        session.execute(stmt)


def fail_if_running(study: Any, tid: int, user_attrs: dict[str, Any]) -> bool:
    """Mark another process's RUNNING trial failed, with ``user_attrs``. Returns False when some
    other process finished it first (then nothing is changed by this call but harmless attrs)."""
    import optuna
    from optuna.trial import TrialState

    st = study._storage
    try:
        # The state first (the storage lets one writer win): a trial that its owner completed
        # meanwhile is left as it is, never marked failed.
        if not st.set_trial_state_values(tid, state=TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    _write_attrs(st, tid, user_attrs, running_only=False)  # the reason, on the trial this call failed
    return True


def add_trial(study: Any, frozen: Any) -> int:
    """``Study.add_trial``, returning the new trial's storage id."""
    return int(study._storage.create_new_trial(study._study_id, template_trial=frozen))


def set_user_attrs(study: Any, trial: Any, attrs: dict[str, Any]) -> None:
    """Write many user attributes of a RUNNING trial in one transaction.

    ``Trial.set_user_attr`` commits each attribute on its own: ~2 ms each on PostgreSQL, so a
    trial's ~60 figures cost more than 0.1 s. Optuna's cached storage never caches an unfinished
    trial, so writing through the RDB backend here leaves no stale cache behind.
    """
    _write_attrs(study._storage, trial_id(trial), attrs)


def _write_attrs(st: Any, tid: int, attrs: dict[str, Any], running_only: bool = True) -> None:
    """The attributes in one transaction; ``running_only=False``: also on a trial this process
    just finished (the reaper's reason, written after the state that it won)."""
    import importlib
    import json

    backend = getattr(st, "_backend", st)
    dialect = getattr(getattr(backend, "engine", None), "name", None)
    if dialect not in ("sqlite", "postgresql"):
        for key, value in attrs.items():
            st.set_trial_user_attr(tid, key, value)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    table = models.TrialUserAttributeModel.__table__
    insert = importlib.import_module(f"sqlalchemy.dialects.{dialect}").insert
    stmt = insert(table).values([{"trial_id": tid, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()])
    stmt = stmt.on_conflict_do_update(index_elements=[table.c.trial_id, table.c.key],
                                      set_={"value_json": stmt.excluded.value_json})
    with _create_scoped_session(backend.scoped_session) as session:
        row = models.TrialModel.find_or_raise_by_id(tid, session, for_update=True)
        if running_only:
            backend.check_trial_is_updatable(tid, row.state)
        session.execute(stmt)
