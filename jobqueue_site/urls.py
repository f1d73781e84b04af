from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("coordination.api.urls")),
]

handler404 = "coordination.api.errors.not_found_json"
handler500 = "coordination.api.errors.server_error_json"
