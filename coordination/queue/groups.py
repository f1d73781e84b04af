"""Capacity groups (models that share a limit, such as one provider API key) as the rules (rules.py)
and the readers (lines.waiting_for, the estimates, the metrics) see them. It reads the catalog and
nothing of the queue, so all of those import it and it imports none of them."""

from dataclasses import dataclass

from coordination.models import CapacityGroup


@dataclass(frozen=True)
class Group:
    name: str
    capacity: int
    models: frozenset

    def using(self, jobs) -> list:
        """The jobs (running ones, as the caller passes them) that use this group: a job counts once,
        however many of the group's models it needs."""
        return [job for job in jobs if self.models.intersection(job.required_models)]

    def use(self, jobs) -> dict:
        """As the API and the console show a group: its name, jobs running in it, its capacity."""
        return {"name": self.name, "running": len(self.using(jobs)), "capacity": self.capacity}


def groups_by_model() -> dict[str, list[Group]]:
    """Every capacity group with members, by member model: one query over the membership rows."""
    return groups_from_rows(CapacityGroup.catalog_models.through.objects.values_list(
        "capacitygroup__name", "capacitygroup__capacity", "catalogmodel__name"
    ))


def groups_from_rows(rows) -> dict[str, list[Group]]:
    """The groups by member model, from membership rows of (group name, group capacity, model name)."""
    members: dict[tuple[str, int], set[str]] = {}
    for name, capacity, model in rows:
        members.setdefault((name, capacity), set()).add(model)
    by_model: dict[str, list[Group]] = {}
    for (name, capacity), models in sorted(members.items()):
        group = Group(name, capacity, frozenset(models))
        for model in models:
            by_model.setdefault(model, []).append(group)
    return by_model
