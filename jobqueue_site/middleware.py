"""WhiteNoise (static files for the admin), able to run as asynchronous middleware too.

WhiteNoise's middleware is synchronous only. Under ASGI, Django then runs everything inside it, views
included, through a thread: a view that waits (`Prefer: wait`) would hold that thread for the whole
wait. This adds the asynchronous way through: a static file is found and answered as WhiteNoise
answers it (its headers, 304s, ranges), its content read off the event loop; anything else is awaited.
"""

import asyncio

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import StreamingHttpResponse
from whitenoise.middleware import WhiteNoiseMiddleware

CHUNK = 64 * 1024


async def _read(file):
    if file is None:  # a HEAD, or a 304
        return
    try:
        while chunk := await asyncio.to_thread(file.read, CHUNK):
            yield chunk
    finally:
        file.close()


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response=None, *args, **kwargs):
        super().__init__(get_response, *args, **kwargs)
        self._is_async = iscoroutinefunction(get_response)
        if self._is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self._is_async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request):
        static_file = self.find_file(request.path_info) if self.autorefresh else self.files.get(request.path_info)
        if static_file is None:
            return await self.get_response(request)
        found = static_file.get_response(request.method, request.META)
        response = StreamingHttpResponse(_read(found.file), status=int(found.status))
        del response["content-type"]  # WhiteNoise's own headers say it
        for key, value in found.headers:
            response[key] = value
        return response
