"""status_image: "is anyone there?" as an image (and JSON) for pages without JavaScript.

render (Pillow, once per look) → cache (site states in memory, kept right by Redis
pub/sub and a sub-second refresh) → handlers (Tornado). `python -m services.status_image`.
"""
