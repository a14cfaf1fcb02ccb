"""im_gateway: the XMPP side of Habla, an external component (XEP-0114).

Operators chat from their own XMPP client. Each site has a bot contact
``<site_id>@<component domain>`` in its operators' rosters (status: who is on the
site; commands: ``!who``, ``!help`` …); each visitor is ``<friendly-name>@<component
domain>``, whose presence status is the page being read.

Where things are:

* ``component``: the XMPP connection (reconnect with backoff; stanzas handed to the stream).
* ``lease``: one active gateway per component domain (Redis lease).
* ``operators`` / ``roster``: who operates which site; roster subscriptions to the site bot.
* ``availability``: operator presence → Redis (heartbeat, expiry) → site online/offline.
* ``coalescer``: visitor page changes → presence, coalesced, with a per-operator ceiling.
* ``routing``: which operator gets a conversation (least busy, sticky, force-away).
* ``relay``: chat lines both ways (visitor → operator, operator reply → log → frontend).
* ``inbound``: what arrives over XMPP, dispatched (strangers get an error).
* ``commands/``: ``!``/``/`` commands, one module per group.
* ``consumers/``: one module per RabbitMQ queue.
* ``gateway``: wires it all together; ``__main__``: the process.
"""
