import pytest

from coordination.models import CatalogModel


@pytest.mark.django_db
def test_catalog_is_seeded_with_the_guides_models():
    assert set(CatalogModel.objects.values_list("name", flat=True)) >= {
        "nano-banana-pro-leonardo", "motion-2.0-fast", "flux-dev", "minimax/video-01"
    }
