"""The catalog as code: GET /models, GET/PATCH/PUT /models/{name}."""

import pytest

from coordination import services
from coordination.models import CatalogModel, Job, JobQueueLog

pytestmark = pytest.mark.django_db

PUBLIC = {"name", "media_type", "capacity", "description", "paused"}


def model(name: str) -> CatalogModel:
    return CatalogModel.objects.get(name=name)


class TestRead:
    def test_a_user_sees_the_enabled_models_with_media_type_and_capacity_only(self, api):
        CatalogModel.objects.filter(name="flux-dev").update(enabled=False)
        response = api.get("/models")
        assert response.status_code == 200
        listed = {entry["name"]: entry for entry in response.json()}
        assert set(listed) == {"nano-banana-pro-leonardo", "motion-2.0-fast", "minimax/video-01"}
        assert listed["minimax/video-01"] == {
            "name": "minimax/video-01", "media_type": "video", "capacity": 1,
            "description": "Text-to-video model.", "paused": False,
        }

    def test_staff_see_every_model_and_every_field(self, staff_api):
        CatalogModel.objects.filter(name="flux-dev").update(enabled=False, credential_env="FLUX_TOKEN")
        listed = {entry["name"]: entry for entry in staff_api.get("/models").json()}
        assert len(listed) == 4
        flux = listed["flux-dev"]
        assert flux["enabled"] is False and flux["credential_env"] == "FLUX_TOKEN"
        editable = {field.name for field in CatalogModel._meta.concrete_fields} - {"id"}
        assert set(flux) == editable

    def test_a_name_with_a_slash_is_read_as_written(self, api):
        response = api.get("/models/minimax/video-01")
        assert response.status_code == 200
        assert response.json()["name"] == "minimax/video-01"

    def test_an_unknown_or_disabled_model_is_not_found(self, api, staff_api):
        CatalogModel.objects.filter(name="flux-dev").update(enabled=False)
        for name in ("no-such-model", "flux-dev"):
            response = api.get(f"/models/{name}")
            assert response.status_code == 404
            assert response.json()["code"] == "not_found"
        assert staff_api.get("/models/flux-dev").json()["enabled"] is False
        assert staff_api.patch("/models/no-such-model", {"capacity": 2}, format="json").status_code == 404


class TestWrite:
    @pytest.fixture(autouse=True)
    def _slots(self, settings):
        settings.COORDINATOR_MAX_ACTIVE_JOBS = 4

    def test_raising_the_capacity_starts_a_waiting_job_and_is_audited(self, staff_api, staff_user, user):
        running = services.job_submit(owner=user, model="flux-dev", prompt="one")
        waiting = services.job_submit(owner=user, model="flux-dev", prompt="two")
        assert Job.objects.get(pk=waiting.pk).status == Job.Status.PENDING

        response = staff_api.patch("/models/flux-dev", {"capacity": 2}, format="json")

        assert response.status_code == 200, response.json()
        assert response.json()["capacity"] == 2 and model("flux-dev").capacity == 2
        assert Job.objects.get(pk=running.pk).status == Job.Status.RUNNING
        assert Job.objects.get(pk=waiting.pk).status == Job.Status.RUNNING
        row = JobQueueLog.objects.filter(event_type=JobQueueLog.Event.MODEL_CHANGED).latest("id")
        assert row.details["actor"] == f"api:{staff_user.username}"
        assert row.details["changes"] == {"capacity": [1, 2]}
        assert row.details["started"] == [str(waiting.job_id)]

    def test_patch_a_name_with_a_slash(self, staff_api):
        response = staff_api.patch("/models/minimax/video-01", {"provider_style": "poll"}, format="json")
        assert response.status_code == 200, response.json()
        assert model("minimax/video-01").provider_style == "poll"

    def test_put_creates_then_replaces(self, staff_api):
        body = {"media_type": "image", "capacity": 3, "description": "SDXL", "timeout_seconds": 120}
        created = staff_api.put("/models/stability/sdxl", body, format="json")
        assert created.status_code == 201, created.json()
        assert created.json()["capacity"] == 3 and model("stability/sdxl").timeout_seconds == 120
        assert JobQueueLog.objects.filter(event_type=JobQueueLog.Event.MODEL_CHANGED,
                                          details__model="stability/sdxl").count() == 1

        replaced = staff_api.put("/models/stability/sdxl", {"media_type": "video"}, format="json")
        assert replaced.status_code == 200, replaced.json()
        sdxl = model("stability/sdxl")
        # A replacement: what the body leaves out takes its default again.
        assert (sdxl.media_type, sdxl.capacity, sdxl.description, sdxl.timeout_seconds) == ("video", 1, "", None)

    def test_put_keeps_a_pause_and_takes_back_what_get_gave(self, staff_api):
        CatalogModel.objects.filter(name="flux-dev").update(paused=True)
        body = {**staff_api.get("/models/flux-dev").json(), "capacity": 2}
        response = staff_api.put("/models/flux-dev", body, format="json")
        assert response.status_code == 200, response.json()
        assert model("flux-dev").paused is True and model("flux-dev").capacity == 2

    @pytest.mark.parametrize("body, field", [
        ({"capacity": 0}, "capacity"),
        ({"media_type": "sound"}, "media_type"),
        ({"runner": "http", "provider": "generic"}, "provider_url"),  # CatalogModel.clean, as the admin's form checks it
        ({"runner": "http", "provider_model": ""}, "provider_model"),  # flux-dev names Replicate, which needs it
        ({"poll_interval_seconds": 0.001}, "poll_interval_seconds"),
        ({"description": 42}, "description"),
        ({"paused": True}, "paused"),
        ({"name": "renamed"}, "name"),
    ])
    def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(self, staff_api, body, field):
        response = staff_api.patch("/models/flux-dev", body, format="json")
        assert response.status_code == 400
        answer = response.json()
        assert answer["code"] == "invalid" and field in answer["fields"] and answer["error"].startswith(f"{field}:")
        flux = model("flux-dev")
        assert (flux.capacity, flux.media_type, flux.runner, flux.paused) == (1, "image", "simulated", False)
        assert not JobQueueLog.objects.filter(event_type=JobQueueLog.Event.MODEL_CHANGED).exists()

    def test_an_unknown_field_is_refused(self, staff_api):
        response = staff_api.patch("/models/flux-dev", {"capacty": 2}, format="json")
        assert response.status_code == 400 and "capacty" in response.json()["error"]

    def test_put_without_a_media_type_is_a_400(self, staff_api):
        response = staff_api.put("/models/new-model", {"capacity": 2}, format="json")
        assert response.status_code == 400 and "media_type" in response.json()["fields"]
        assert not CatalogModel.objects.filter(name="new-model").exists()

    def test_a_user_may_not_write(self, api):
        assert api.patch("/models/flux-dev", {"capacity": 2}, format="json").status_code == 403
        response = api.put("/models/new-model", {"media_type": "image"}, format="json")
        assert response.status_code == 403 and response.json()["code"] == "permission_denied"
        assert model("flux-dev").capacity == 1 and not CatalogModel.objects.filter(name="new-model").exists()

    def test_max_runtime_seconds_is_the_old_name_of_timeout_seconds(self, staff_api):
        response = staff_api.patch("/models/flux-dev", {"max_runtime_seconds": 300}, format="json")
        assert response.status_code == 200, response.json()
        assert response.json()["timeout_seconds"] == 300 and model("flux-dev").timeout_seconds == 300
        # With both, the smaller is the deadline (as the admin's form).
        staff_api.put("/models/flux-dev", {"media_type": "image", "max_runtime_seconds": 90, "timeout_seconds": 600},
                      format="json")
        assert model("flux-dev").timeout_seconds == 90
