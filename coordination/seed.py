"""The usage guide's models and workflow: seeded by a data migration (and by tests after a flush).

Functions take the model classes, so a migration can pass its historical models. Existing rows are
left as operators edited them.
"""

CATALOG = [
    {"name": "nano-banana-pro-leonardo", "media_type": "image", "default_simulate_seconds": 5.0,
     "description": "Image model used for styling (workflow step 1)."},
    {"name": "motion-2.0-fast", "media_type": "video", "default_simulate_seconds": 10.0,
     "description": "Fast image/text-to-video model."},
    {"name": "flux-dev", "media_type": "image", "default_simulate_seconds": 5.0,
     "description": "Text-to-image model."},
    {"name": "minimax/video-01", "media_type": "video", "default_simulate_seconds": 10.0,
     "description": "Text-to-video model."},
]

# Where the guide's models run (../shared/PROVIDERS.md): recorded on the seeded rows while they stay on
# the simulated runner, so an operator switches one to runner http with its provider already named.
# Leonardo publishes no v1 modelId for Nano Banana Pro: its guide (docs.leonardo.ai/docs/nano-banana-pro)
# reaches it only through POST /api/rest/v2/generations as model "gemini-image-2", whose answer is not
# documented and which the leonardo adapter does not speak. That one is left for the operator to fill.
GUIDE_PROVIDERS = {
    "nano-banana-pro-leonardo": ("leonardo", ""),
    "motion-2.0-fast": ("leonardo", "MOTION2FAST"),
    "flux-dev": ("replicate", "black-forest-labs/flux-dev"),
    "minimax/video-01": ("replicate", "minimax/video-01"),
}

WORKFLOWS = [
    {
        "workflow_id": "knight-style-img-to-video",
        "name": "Knight style: image to video",
        "description": "Restyles the input image as a knight, then animates it.",
        "inputs": ["input_image"],
        "steps": [
            ("style", "nano-banana-pro-leonardo", "Restyle the person in the image as a medieval knight. {prompt}"),
            ("animate", "motion-2.0-fast", "Animate the knight: a slow cinematic push-in. {prompt}"),
        ],
    }
]


def seed_catalog(CatalogModel, WorkflowDefinition, WorkflowStep, JobQueueState) -> None:
    for entry in CATALOG:
        CatalogModel.objects.get_or_create(name=entry["name"], defaults=entry)
    if any(field.name == "provider" for field in CatalogModel._meta.get_fields()):  # not before migration 0024
        record_guide_providers(CatalogModel)
    for spec in WORKFLOWS:
        workflow, created = WorkflowDefinition.objects.get_or_create(
            workflow_id=spec["workflow_id"],
            defaults={key: spec[key] for key in ("name", "description", "inputs")},
        )
        if created:
            for position, (name, model, prompt) in enumerate(spec["steps"], start=1):
                WorkflowStep.objects.create(
                    workflow=workflow,
                    position=position,
                    name=name,
                    default_model=CatalogModel.objects.get(name=model),
                    prompt_template=prompt,
                )
    # The seed's singleton: `SELECT * FROM job_queue_state` shows slot 1 from the first start.
    JobQueueState.objects.get_or_create(id=1)


def record_guide_providers(CatalogModel) -> None:
    """Name the guide models' providers on the rows that name none yet, leaving their runner as it is
    (an operator's choice, and an operator's edit of these fields, are kept)."""
    for name, (provider, provider_model) in GUIDE_PROVIDERS.items():
        CatalogModel.objects.filter(name=name, provider="").update(provider=provider, provider_model=provider_model)
