"""Workflow definitions and their execution.

`get_all_workflows()` is the usage guide's troubleshooting helper ("Workflows not extracting
models"); run it in `manage.py shell`.
"""


def get_all_workflows() -> list[dict]:
    # Imported when called: Django imports this package before its models are ready.
    from workflows.selectors import workflow_list_as_dicts

    return workflow_list_as_dicts()
