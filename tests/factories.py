import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from coordination.models import Job


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", "password")

    @classmethod
    def _after_postgeneration(cls, instance, create, results=None):
        if create:
            instance.save(update_fields=["password"])  # keep the hash set_password made


class JobRowFactory(factory.django.DjangoModelFactory):
    """A raw jobs row, written without the coordinator: for queries and repair scenarios only."""

    class Meta:
        model = Job

    kind = Job.Kind.NORMAL
    job_type = "video"
    model = "motion-2.0-fast"
    prompt = factory.Sequence(lambda n: f"prompt {n}")
    required_models = factory.LazyAttribute(lambda job: [job.model] if job.model else [])
    status = Job.Status.PENDING
    created_at = factory.LazyFunction(timezone.now)
