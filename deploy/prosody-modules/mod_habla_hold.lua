-- mod_habla_hold: hold stanzas for an external component (XEP-0114) while no
-- component stream is connected, and hand them, in order, to the next one.
--
-- Written for Habla (its gateway partitions move between processes: for the
-- seconds between one process's stream closing and the next one's handshake,
-- Prosody's mod_component would answer every stanza to the domain with
-- "Component unavailable", and operators' clients show their lines as failed).
-- Load it on every Component host served by an external component:
--
--   plugin_paths = { "/path/to/deploy/prosody-modules" }
--   Component "p0.chat.example.org"
--     component_secret = "..."
--     modules_enabled = { "habla_hold" }
--
-- Options (per Component, or global):
--   habla_hold_seconds             = 10       -- how long a stanza waits for a component
--   habla_hold_max_stanzas         = 2000     -- held at once on this host
--   habla_hold_max_bytes           = 2097152  -- serialised size held at once on this host
--   habla_hold_max_per_sender      = 200      -- held at once from one bare JID
--   habla_hold_max_bytes_per_sender = 262144  -- serialised size from one bare JID
--
-- A stanza held longer than habla_hold_seconds, or one refused because a bound is
-- reached, is answered exactly as mod_component answers while no component is
-- connected (type "wait", remote-server-timeout, <not-connected/>); errors and
-- results are dropped, never answered. Unloading the module bounces what it holds.
--
-- Handover: a connected component may ask the server to start holding its stanzas
-- before it closes its stream, by sending to its own domain
--   <iq type="set" to="DOMAIN" id="..."><hold xmlns="urn:x-habla:component-hold:0"/></iq>
-- The result means: nothing routed after it reaches this stream; what follows is
-- held for the next component session (responses to the component's own requests,
-- type error or result, still reach it). Only the connected component itself may ask.

local st = require "util.stanza";
local jid_bare = require "util.jid".bare;
local time_now = require "util.time".now;

local hosts = prosody.hosts;

local xmlns_hold = "urn:x-habla:component-hold:0";
local xmlns_not_connected = "xmpp:prosody.im/protocol/component";
local xmlns_disco_info = "http://jabber.org/protocol/disco#info";

if module:get_host_type() ~= "component" then
	error("mod_habla_hold is for Component hosts of external components (XEP-0114)", 0);
end

local hold_seconds = module:get_option_number("habla_hold_seconds", 10);
local max_stanzas = module:get_option_number("habla_hold_max_stanzas", 2000);
local max_bytes = module:get_option_number("habla_hold_max_bytes", 2 * 1024 * 1024);
local max_per_sender = module:get_option_number("habla_hold_max_per_sender", 200);
local max_bytes_per_sender = module:get_option_number("habla_hold_max_bytes_per_sender", 256 * 1024);

-- mod_component keeps its per-host state (connected, session) in its host
-- environment: hosts[host].modules.component (core/modulemanager.lua).
local function component()
	return hosts[module.host] and hosts[module.host].modules.component;
end

if not component() then
	module:log("error", "mod_component is not loaded on %s (not an external component?): nothing is held", module.host);
	return;
end

-- The held stanzas, oldest first: queue[head .. tail].
local queue, head, tail = {}, 1, 0;
local held_bytes = 0;
local senders = {}; -- bare JID -> { n = stanzas, bytes = size } held from it
local expiry_timer = nil;
local handing_over = nil; -- a connected session that asked for its stanzas to be held
local gap = nil; -- { since = time, held = n, refused = n } while stanzas are being held

-- Exactly what mod_component answers while no component is connected.
local function bounce(stanza, origin)
	local kind = stanza.attr.type;
	if kind == "error" or kind == "result" then return; end
	origin.send(st.error_reply(stanza, "wait", "remote-server-timeout", "Component unavailable", module.host)
		:tag("not-connected", { xmlns = xmlns_not_connected }));
end

local function pop()
	local item = queue[head];
	queue[head] = nil;
	head = head + 1;
	if head > tail then head, tail = 1, 0; end
	held_bytes = held_bytes - item.size;
	local from = senders[item.sender];
	from.n, from.bytes = from.n - 1, from.bytes - item.size;
	if from.n == 0 then senders[item.sender] = nil; end
	return item;
end

local function expire()
	local expired = 0;
	local now = time_now();
	while head <= tail and queue[head].expires <= now do
		local item = pop();
		bounce(item.stanza, item.origin);
		expired = expired + 1;
	end
	if expired > 0 then
		module:log("info", "%d held stanza(s) waited %gs without a component: bounced", expired, hold_seconds);
	end
	if head <= tail then
		return queue[head].expires - now;
	end
	expiry_timer = nil;
	if gap and gap.refused > 0 then
		module:log("info", "%d stanza(s) were refused while the hold was full", gap.refused);
	end
	gap = nil; -- nothing held any more: the next stanza logs a new gap
	return nil;
end

local function hold(stanza, origin)
	if not gap then
		gap = { since = time_now(), held = 0, refused = 0 };
		module:log("info", "Holding stanzas to %s for the next component stream (each up to %gs)", module.host, hold_seconds);
	end
	local size = #tostring(stanza);
	local sender = jid_bare(stanza.attr.from) or "";
	local from = senders[sender];
	local count = tail - head + 1;
	if count >= max_stanzas or held_bytes + size > max_bytes
		or size > max_bytes_per_sender
		or (from and (from.n >= max_per_sender or from.bytes + size > max_bytes_per_sender)) then
		if gap.refused == 0 then
			module:log("info", "Hold full (%d stanzas, %d bytes held; sender %s): bouncing what exceeds it",
				count, held_bytes, sender);
		end
		gap.refused = gap.refused + 1;
		module:log("debug", "Hold full, bouncing: %s", stanza:top_tag());
		bounce(stanza, origin);
		return;
	end
	local now = time_now();
	tail = tail + 1;
	queue[tail] = { stanza = stanza, origin = origin, expires = now + hold_seconds, size = size, sender = sender };
	held_bytes = held_bytes + size;
	if from then
		from.n, from.bytes = from.n + 1, from.bytes + size;
	else
		senders[sender] = { n = 1, bytes = size };
	end
	gap.held = gap.held + 1;
	module:log("debug", "Holding: %s", stanza:top_tag());
	if not expiry_timer then
		expiry_timer = module:add_timer(hold_seconds, expire);
	end
end

local function is_named_disco_info(stanza)
	if stanza.name ~= "iq" or stanza.attr.type ~= "get" or stanza.attr.to ~= module.host then return false; end
	local query = stanza.tags[1];
	return query ~= nil and query.name == "query" and query.attr.xmlns == xmlns_disco_info
		and (not query.attr.node or query.attr.node == "")
		and module:get_option_string("name") ~= nil;
end

-- Runs just before mod_component's handler (priority -1), after every other module's.
local function on_stanza(event)
	local env = component();
	local stanza = event.stanza;
	local kind = stanza.attr.type;
	if env.connected then
		if not (handing_over and handing_over == env.session) then return; end -- mod_component sends it
		-- Handing over: answers to the component's own requests still reach it.
		if kind == "error" or kind == "result" then return; end
	else
		if kind == "error" or kind == "result" then
			module:log("debug", "No component stream, dropping: %s", stanza:top_tag());
			return true; -- what mod_component does with them, without its warning per stanza
		end
		if is_named_disco_info(stanza) then return; end -- mod_component answers it itself
	end
	hold(stanza, event.origin);
	return true;
end

for _, kind in ipairs({ "iq", "message", "presence" }) do
	for _, to in ipairs({ "bare", "full", "host" }) do
		module:hook(kind .. "/" .. to, on_stanza, -0.5);
	end
end

-- The component asks to be handed over (see the header). Above mod_iq (priority 0).
module:hook("iq/host", function(event)
	local stanza, origin = event.stanza, event.origin;
	if stanza.attr.type ~= "set" or not stanza:get_child("hold", xmlns_hold) then return; end
	local env = component();
	if not (env.connected and origin == env.session) then
		origin.send(st.error_reply(stanza, "auth", "forbidden", "Only the connected component may ask for a hold"));
		return true;
	end
	handing_over = origin;
	origin.send(st.reply(stanza));
	module:log("info", "Component handing over: holding stanzas to %s for the next component stream", module.host);
	return true;
end, 10);

module:hook("component-disconnected", function()
	handing_over = nil;
	if head <= tail then
		module:log("info", "Component stream closed: %d stanza(s) held for the next one", tail - head + 1);
	end
end);

-- mod_component sends <handshake/> and then fires this, synchronously: the held
-- stanzas go out before anything else can be routed to the new stream. Before
-- every other handler of the event (mod_privilege's advertisement, ...).
module:hook("component-authenticated", function(event)
	local session = event.session;
	handing_over = nil;
	if expiry_timer then
		expiry_timer:stop();
		expiry_timer = nil;
	end
	local now = time_now();
	local delivered, expired = 0, 0;
	while head <= tail do
		local item = pop();
		if item.expires <= now then
			bounce(item.stanza, item.origin);
			expired = expired + 1;
		else
			item.stanza.attr.xmlns = nil;
			session.send(item.stanza);
			delivered = delivered + 1;
		end
	end
	if gap then
		module:log("info", "Component connected: %d held stanza(s) delivered in order after %.2fs"
			.. " (%d expired, %d refused while the hold was full)",
			delivered, now - gap.since, expired, gap.refused);
		gap = nil;
	end
end, 1000);

function module.unload()
	if expiry_timer then
		expiry_timer:stop();
		expiry_timer = nil;
	end
	local bounced = 0;
	while head <= tail do
		local item = pop();
		bounce(item.stanza, item.origin);
		bounced = bounced + 1;
	end
	if bounced > 0 then
		module:log("info", "Unloaded: %d held stanza(s) bounced", bounced);
	end
end
