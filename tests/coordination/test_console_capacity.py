"""The queue console's policies and idle capacity (issue 28, items 3 and 4): each line's heading says
its policy, use and line limit; each capacity group has a card; and every model or slot that is free
while jobs wait for it says why, in the scheduler's own terms."""

import html
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from coordination.models import CapacityGroup, CatalogModel, Job, JobQueueState
from coordination.services import capacity_group_save, catalog_model_save, job_complete, model_pause
from tests.helpers import execute_workflow, fresh, submit

pytestmark = pytest.mark.django_db

IMAGE, VIDEO, OTHER_VIDEO, NANO = "flux-dev", "motion-2.0-fast", "minimax/video-01", "nano-banana-pro-leonardo"


@pytest.fixture
def console(client, staff_user):
    """The console's page as an operator's browser gets it, as text."""
    client.force_login(type(staff_user).objects.get(pk=staff_user.pk))
    return lambda: client.get(reverse("admin:queue-console")).content.decode()


@pytest.fixture
def four_slots(settings):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = 4


def text(fragment: str) -> str:
    """What a person reads of an HTML fragment: no tags, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", fragment)).split())


def idle(page: str) -> list[str]:
    """The sentences under "Free while jobs wait", as read (job ids short)."""
    if 'id="idle"' not in page:
        return []
    block = page[page.index('id="idle"'):]
    return [text(item) for item in re.findall(r"<li>(.*?)</li>", block[:block.index("</ul>")], re.S)]


def heading(page: str, model: str) -> str:
    start = page.index(f'data-model="{model}"')
    return text(page[page.rindex("<h3>", 0, start):page.index("</p>", start)])


def card(page: str, name: str) -> str:
    """A capacity group's card, as read."""
    start = page.index(f'data-group="{name}">') + len(f'data-group="{name}">')
    return text(page[start:page.index("</div>", start)])


def short(job: Job) -> str:
    return str(job.job_id)[:8]


def group(name: str, capacity: int, *models: str) -> CapacityGroup:
    made = CapacityGroup(name=name, capacity=capacity)
    capacity_group_save(group=made, models=list(CatalogModel.objects.filter(name__in=models)), actor="test")
    return made


def edit(model: str, **fields) -> None:
    catalog = CatalogModel.objects.get(name=model)
    for field, value in fields.items():
        setattr(catalog, field, value)
    catalog_model_save(model=catalog, actor="test")


# --- idle capacity: each case says its sentence ---------------------------------------------------


@pytest.mark.usefixtures("four_slots")
def test_a_free_model_whose_head_workflow_waits_for_a_model_in_use_says_so(console, user):
    running = submit(user, model=VIDEO)
    workflow = execute_workflow(user)  # nano-banana-pro-leonardo, then motion-2.0-fast: both at once

    page = console()

    assert idle(page) == [
        f"Slots 2, 3 and 4 are free while jobs wait: none of them may start — {VIDEO} is in use by job {short(running)}; "
        f"{NANO} as said below",
        f"{NANO} is free but held: workflow {short(workflow)} at the head of its line waits for {VIDEO} "
        f"(in use by job {short(running)})",
    ]
    sentences = page[page.index('id="idle"'):page.index("</ul>", page.index('id="idle"'))]
    assert reverse("admin:coordination_job_change", args=[str(workflow.job_id)]) in sentences


@pytest.mark.usefixtures("four_slots")
def test_a_free_model_whose_head_waits_behind_a_job_in_another_line_names_that_job(console, user):
    running = submit(user, model=VIDEO)
    before = submit(user, model=VIDEO)
    workflow = execute_workflow(user)

    sentences = idle(console())

    assert sentences[1] == (
        f"{NANO} is free but held: workflow {short(workflow)} at the head of its line waits for {VIDEO} "
        f"(in use by job {short(running)}; job {short(before)} goes first in its line)"
    )


@pytest.mark.usefixtures("four_slots")
def test_a_free_model_in_a_full_capacity_group_says_the_group_holds_it(console, user):
    group("acme-key", 1, VIDEO, OTHER_VIDEO)
    running = submit(user, model=VIDEO)
    waiting = submit(user, model=OTHER_VIDEO)

    sentences = idle(console())

    assert fresh(waiting).conflict_reason == "Capacity group acme-key full: 1 of 1 running"
    assert sentences[-1] == (
        f"{OTHER_VIDEO} is free but held: job {short(waiting)} at the head of its line waits for "
        "room in capacity group acme-key (1 of 1 running)"
    )
    assert short(running) not in sentences[-1]


@pytest.mark.usefixtures("four_slots")
def test_a_paused_model_with_jobs_waiting_says_they_wait_for_an_operator(console, user):
    submit(user, model=IMAGE)
    model_pause(name=OTHER_VIDEO, paused=True, actor="test")
    waiting = submit(user, model=OTHER_VIDEO)

    assert idle(console()) == [
        f"Slots 2, 3 and 4 are free while jobs wait: none of them may start — {OTHER_VIDEO} as said below",
        f"{OTHER_VIDEO} is paused: job {short(waiting)} at the head of its line waits for an operator to resume it",
    ]


@pytest.mark.usefixtures("four_slots")
def test_a_free_model_whose_head_needs_a_paused_model_says_which(console, user):
    model_pause(name=VIDEO, paused=True, actor="test")
    workflow = execute_workflow(user)

    assert fresh(workflow).held
    assert idle(console())[1:] == [
        f"{VIDEO} is paused: workflow {short(workflow)} at the head of its line waits for an operator to resume it",
        f"{NANO} is free but held: workflow {short(workflow)} at the head of its line waits for {VIDEO} "
        "(paused by an operator)",
    ]


@pytest.mark.usefixtures("four_slots")
def test_the_head_named_is_the_job_the_scheduler_takes_next_past_ten_held_ones(console, user):
    """Jobs a pause holds step aside (the scheduler's heads_of(unheld=True)), however many: the
    console's line shows ten rows, but the head it names is the scheduler's, not the first unheld row."""
    model_pause(name=VIDEO, paused=True, actor="test")
    held = [execute_workflow(user) for _ in range(11)]  # NANO then VIDEO: held by the pause
    group("acme-key", 1, NANO, IMAGE)
    submit(user, model=IMAGE)  # fills the group
    waiting = submit(user, model=NANO)

    assert all(fresh(job).held for job in held) and not fresh(waiting).held
    assert f"{NANO} is free but held: job {short(waiting)} at the head of its line waits for room in capacity " \
           "group acme-key (1 of 1 running)" in idle(console())


@pytest.mark.usefixtures("four_slots")
def test_on_a_fair_line_the_head_keeps_its_owners_turn_past_a_held_job(console, user, other_user):
    """fair_head(unheld=True): the owner whose turn it is keeps it with their next job a pause does
    not hold; the turn does not pass to the next owner."""
    edit(NANO, line_policy="fair")
    model_pause(name=VIDEO, paused=True, actor="test")
    group("acme-key", 1, NANO, IMAGE)
    submit(other_user, model=IMAGE)  # fills the group: every NANO job waits for it
    execute_workflow(user)  # user's first in NANO's line, held by the pause
    theirs = submit(other_user, model=NANO)
    mine = submit(user, model=NANO)

    assert fresh(theirs).status == fresh(mine).status == Job.Status.PENDING
    assert f"{NANO} is free but held: job {short(mine)} at the head of its line waits for room in capacity " \
           "group acme-key (1 of 1 running)" in idle(console())


@pytest.mark.usefixtures("four_slots")
def test_a_head_that_may_start_is_said_so_and_the_free_slots_do_not_deny_it(console, user):
    """Rows changed by hand (the guide's repairs): the running job gone without a report. The
    rules would start the waiting one now; the console says so rather than that nothing may start."""
    running, waiting = submit(user, model=IMAGE), submit(user, model=IMAGE)
    Job.objects.filter(pk=running.pk).update(status=Job.Status.FAILED)
    JobQueueState.objects.filter(active_job_id=running.job_id).update(active_job_id=None, active_models=[])

    sentences = idle(console())

    assert sentences[0].startswith("Slots 1, 2, 3 and 4 are free while jobs wait: the coordinator's next decision starts what may")
    assert sentences[1].startswith(f"{IMAGE} is free: job {short(waiting)} at the head of its line may start by the rules")


@pytest.mark.usefixtures("four_slots")
def test_free_slots_while_every_waiting_job_needs_a_model_in_use_say_which(console, user):
    video, image = submit(user, model=VIDEO), submit(user, model=IMAGE)
    submit(user, model=VIDEO), submit(user, model=IMAGE)

    assert idle(console()) == [
        "Slots 3 and 4 are free while jobs wait: none of them may start — "
        f"{IMAGE} is in use by job {short(image)}; {VIDEO} is in use by job {short(video)}",
    ]


def test_in_serialized_mode_a_free_model_waits_for_the_one_slot(console, user):
    running = submit(user, model=VIDEO)
    waiting = submit(user, model=IMAGE)

    assert fresh(running).status == Job.Status.RUNNING
    assert idle(console()) == [
        f"{IMAGE} is free but held: job {short(waiting)} at the head of its line waits for the one slot "
        "(serialized mode: one job at a time)",
    ]


@pytest.mark.usefixtures("four_slots")
def test_every_slot_busy_is_said_for_each_free_model_with_jobs_waiting(console, user):
    edit(IMAGE, capacity=2)
    running = [submit(user, model=model) for model in (VIDEO, OTHER_VIDEO, NANO, IMAGE)]
    waiting = submit(user, model=IMAGE)  # flux-dev has room for one more; the slots have none

    assert all(fresh(job).status == Job.Status.RUNNING for job in running)
    assert idle(console()) == [
        f"{IMAGE} is free but held: job {short(waiting)} at the head of its line waits for a slot (all 4 are busy)",
    ]


@pytest.mark.parametrize("slots", [1, 4])
def test_nothing_is_said_when_nothing_waits_or_what_waits_waits_for_busy_capacity(console, user, settings, slots):
    settings.COORDINATOR_MAX_ACTIVE_JOBS = slots
    running = submit(user, model=VIDEO)
    assert idle(console()) == []

    for model in (IMAGE, OTHER_VIDEO, NANO)[:slots - 1]:
        submit(user, model=model)  # every slot busy
    submit(user, model=VIDEO)

    page = console()
    assert idle(page) == [] and "Free while jobs wait" not in page
    job_complete(job_id=running.job_id, attempt=1)  # the waiting job starts: still nothing idle
    assert idle(console()) == []


# --- policies in sight ----------------------------------------------------------------------------


@pytest.mark.usefixtures("four_slots")
def test_each_lines_heading_says_its_policy_use_line_limit_and_pause(console, user, other_user):
    edit(VIDEO, line_policy=CatalogModel.LinePolicy.FAIR, capacity=2, max_waiting=5)
    for owner in (user, user, user, other_user, other_user):
        submit(owner, model=VIDEO)
    model_pause(name=OTHER_VIDEO, paused=True, actor="test")

    page = console()

    assert heading(page, VIDEO).startswith(f"{VIDEO} fair · running 2 of 2 · 3 waiting · line limit 3 of 5")
    assert heading(page, IMAGE).startswith(f"{IMAGE} FIFO · running 0 of 1 · 0 waiting")
    assert "line limit" not in heading(page, IMAGE)
    assert heading(page, OTHER_VIDEO).startswith(f"{OTHER_VIDEO} paused FIFO · running 0 of 1 · 0 waiting")


def test_a_fair_line_in_serialized_mode_says_it_is_first_come_first_served(console):
    edit(VIDEO, line_policy=CatalogModel.LinePolicy.FAIR)
    assert heading(console(), VIDEO).startswith(f"{VIDEO} FIFO (fair with more slots) · running 0 of 1")


@pytest.mark.usefixtures("four_slots")
def test_a_capacity_group_has_a_card_with_its_members_use_and_holders(console, user):
    group("acme-key", 2, VIDEO, OTHER_VIDEO, NANO)
    group("spare-key", 1, IMAGE)
    video, workflow = submit(user, model=OTHER_VIDEO), execute_workflow(user)

    page = console()

    assert card(page, "acme-key") == (f"acme-key full running 2 of 2 members: {OTHER_VIDEO}, {VIDEO}, {NANO} "
                                      f"held by: normal {short(video)}, workflow {short(workflow)}")
    cards = page[page.index('id="groups"'):page.index('id="lines"')]
    assert reverse("admin:coordination_job_change", args=[str(workflow.job_id)]) in cards
    assert card(page, "spare-key") == f"spare-key running 0 of 1 members: {IMAGE} held by: no job"


# --- bounded reads --------------------------------------------------------------------------------


def policies_in_use(user, other_user) -> None:
    """Four slots, a fair line with a line limit (motion-2.0-fast) and a capacity group (acme-key) in
    use: nano-banana-pro-leonardo is free but held (its workflow waits behind a job on motion-2.0-fast),
    flux-dev is free but held (acme-key is full), and two slots are free."""
    edit(VIDEO, line_policy=CatalogModel.LinePolicy.FAIR, max_waiting=1000)
    group("acme-key", 1, OTHER_VIDEO, IMAGE)
    submit(user, model=VIDEO), submit(other_user, model=OTHER_VIDEO)
    submit(user, model=VIDEO), execute_workflow(user), submit(user, model=IMAGE)  # the fair line: user's turns in order


def more_waiting(user, other_user, count: int) -> None:
    for n in range(count):
        owner = user if n % 2 else other_user
        if n % 7 == 0:
            execute_workflow(owner)  # behind the first workflow in nano-banana-pro-leonardo's line
        else:
            submit(owner, model=(VIDEO, OTHER_VIDEO, IMAGE)[n % 3])


@pytest.mark.usefixtures("four_slots")
def test_the_capacity_reads_make_as_many_queries_for_200_waiting_jobs_as_for_5(
    console, user, other_user, settings, django_assert_num_queries
):
    settings.COORDINATOR_MAX_PENDING_PER_USER = 1000
    policies_in_use(user, other_user)
    more_waiting(user, other_user, 2)
    with CaptureQueriesContext(connection) as few:
        before = idle(console())
    assert [sentence.split(":")[0] for sentence in before] == [
        "Slots 3 and 4 are free while jobs wait", f"{IMAGE} is free but held", f"{NANO} is free but held",
    ]
    assert "goes first in its line" in before[2]

    more_waiting(user, other_user, 195)
    assert Job.objects.filter(status=Job.Status.PENDING).count() == 200

    with django_assert_num_queries(len(few.captured_queries)):
        after = idle(console())
    assert after == before
