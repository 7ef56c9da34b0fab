"""The pages a person reads: Swagger UI at ``/docs``, ReDoc at ``/redoc``, and ``/`` to them.

Both load their files from the service itself (the ``fastapi-offline``
package's), so they work where the browser cannot reach the internet. The
pages are those FastAPI would serve, with what a reader should not meet
turned off: the pattern of each id stays in /openapi.json, for clients and
validators, and the page shows the words of its description instead of a
250-character regex.
"""

import html
import json

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, RedirectResponse

STATIC = "/static-offline-docs"  # where FastAPIOffline serves Swagger UI's and ReDoc's files

router = APIRouter(include_in_schema=False)

# Swagger UI: no pattern, length or bounds beside a parameter (showCommonExtensions),
# and a plugin that leaves "matches <pattern>" out of every schema it draws.
SWAGGER_UI = """<!DOCTYPE html>
<html>
<head>
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link type="text/css" rel="stylesheet" href="{static}/swagger-ui.css">
<link rel="shortcut icon" href="{static}/favicon.png">
<title>{title} - Swagger UI</title>
</head>
<body>
<div id="swagger-ui"></div>
<script src="{static}/swagger-ui-bundle.js"></script>
<script>
const NoPatterns = () => ({{
  wrapComponents: {{
    JSONSchema202012KeywordConstraint: (Original, system) => (props) =>
      String(props.constraint && props.constraint.value).startsWith("matches ")
        ? null
        : system.React.createElement(Original, props),
  }},
}});
SwaggerUIBundle({{
  url: {openapi},
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: false,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  plugins: [NoPatterns],
}});
</script>
</body>
</html>
"""

REDOC = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="shortcut icon" href="{static}/favicon.png">
<title>{title} - ReDoc</title>
<style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<noscript>ReDoc needs JavaScript to show the documentation.</noscript>
<redoc spec-url="{openapi}" hide-schema-pattern="true"></redoc>
<script src="{static}/redoc.standalone.js"></script>
</body>
</html>
"""


def _root(request: Request) -> str:
    root_path: str = request.scope.get("root_path", "")
    return root_path


@router.get("/")
async def home(request: Request) -> RedirectResponse:
    # A path, not a URL: whatever host the proxy in front answers for.
    return RedirectResponse(f"{_root(request)}/docs")


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    # JSON in a script: "<" escaped, so that no value can end the script early.
    openapi = json.dumps(f"{root}/openapi.json").replace("<", "\\u003c")
    static = html.escape(root + STATIC)
    title = html.escape(request.app.title)
    return HTMLResponse(SWAGGER_UI.format(static=static, title=title, openapi=openapi))


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    static, openapi = html.escape(root + STATIC), html.escape(f"{root}/openapi.json")
    title = html.escape(request.app.title)
    return HTMLResponse(REDOC.format(static=static, title=title, openapi=openapi))
