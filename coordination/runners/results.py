"""A job's result as every runner gives it: `{..., "output", "files"}` (the simulated runner, the http
runner's sync, poll and callback answers; a workflow lists its steps' files, each with its `step`).

`output` is what the model gave, as it gave it. `files` lists the files the job produced, always a
list (empty when none), each `{"source_url", "content_type"?}`:
- the provider's own `files`, when its answer has that key: a list whose items are a URL string or an
  object `{"url" (or "source_url"), "content_type"?}`; items without a URL string are left out (a
  job that succeeded is not failed over its list), and `"files": []` says there are none;
- else the URLs in `output`: an `http(s)://` URL string, or a list holding such strings (other
  outputs, objects included, list no files);
- `content_type` as the provider said, else guessed from the URL's extension by Python's built-in
  `mimetypes` table (not the host's, so every machine guesses alike), else left out.
"""

import mimetypes
from urllib.parse import urlsplit

_TYPES = mimetypes.MimeTypes()  # Python's built-in table only: /etc/mime.types differs between hosts


def runner_result(output, /, *, files=None, **fields) -> dict:
    """`fields` with the output as given and `files` (the provider's list, else found in `output`)."""
    return {**fields, "output": output, "files": files_listed(files, output)}


def files_listed(files, output=None) -> list[dict]:
    if files is None:
        items = output if isinstance(output, list) else [output]
        return [_file(item) for item in items if isinstance(item, str) and item.lower().startswith(("http://", "https://"))]
    listed = []
    for item in files if isinstance(files, list) else [files]:
        said = item if isinstance(item, dict) else {"url": item}
        url, content_type = said.get("url") or said.get("source_url"), said.get("content_type")
        if isinstance(url, str) and url.strip():
            listed.append(_file(url.strip(), content_type if isinstance(content_type, str) else None))
    return listed


def guessed_type(name: str) -> str | None:
    """The content type of a file named `name` (a path or a file name), from its extension."""
    return _TYPES.guess_type(name)[0]


def _file(url: str, content_type: str | None = None) -> dict:
    content_type = (content_type or "").strip() or guessed_type(url if url.startswith("data:") else _path(url))
    return {"source_url": url, "content_type": content_type} if content_type else {"source_url": url}


def _path(url: str) -> str:
    """The URL's path, for its extension; a URL urllib cannot split (`http://[bad`) is listed untyped,
    not allowed to fail a job that succeeded."""
    try:
        return urlsplit(url).path
    except ValueError:
        return ""
