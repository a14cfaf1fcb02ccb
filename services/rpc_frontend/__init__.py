"""rpc_frontend: the visitor's half of Habla (Tornado).

Serves the embed loader and the chat widget, the widget's JSON/WebSocket API
(long-poll fallback), the hosted chat page, the demo and theme-preview pages.
Visitor lines go into the conversation log in Redis and onto ``habla.visitor``;
replies arrive on this instance's own delivery queue and wake the visitor's
connections, which always re-read the log "after seq N" so nothing is lost or doubled.

Modules: ``context`` (what the app depends on), ``hub`` (who is connected here),
``stream`` (a connection's position in the log), ``chat`` (what a visitor can do,
no HTTP), ``origins``, ``delivery`` (the queue consumer), ``follow``
(site status pub/sub), ``handlers/`` (HTTP and WebSocket), ``app`` (routes).
"""
