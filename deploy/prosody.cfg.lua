-- Prosody for docker-compose. Names and the component secret come from the
-- environment (Prosody reads ENV_<NAME> as the variable <NAME>).
-- Habla's own modules (mod_habla_hold), mounted here by docker-compose.yml.
plugin_paths = { "/etc/prosody/habla-modules" }
modules_enabled = { "disco", "roster", "saslauth", "tls", "limits", "ping", "carbons", "blocklist", "vcard_legacy", "version", "time", "uptime" }
modules_disabled = { "s2s" }
-- Debian's default 10 kb/s per client throttled operators to ~54 msgs/s; raise it.
limits = { c2s = { rate = "100kb/s"; burst = "2s" } }
network_settings = { nagle = false }
component_ports = { 5347 }
component_interfaces = { "*" }
c2s_require_encryption = true

VirtualHost (ENV_HABLA_XMPP_DOMAIN or "localhost")

-- mod_habla_hold on every component: while a gateway hands its domain over (or dies
-- and another takes over, 2-3 s) operators' stanzas to the domain wait for the next
-- gateway, in order, instead of bouncing. habla_hold_seconds (10) bounds the wait,
-- habla_hold_max_stanzas (2000), habla_hold_max_bytes (2 MiB), _per_sender (200) and
-- _bytes_per_sender (256 KiB) the memory (see the module's header).
Component (ENV_HABLA_XMPP_COMPONENT_DOMAIN or "chat.localhost")
  component_secret = ENV_HABLA_XMPP_COMPONENT_SECRET
  modules_enabled = { "habla_hold" }

-- Gateway partitions (HABLA_GATEWAY_PARTITIONS = P > 1): one component per partition,
-- p0 .. p<P-1> under the component domain, same secret (libs/common/partitions.py).
local partitions = tonumber(ENV_HABLA_GATEWAY_PARTITIONS or "1") or 1
if partitions > 1 then
  for n = 0, partitions - 1 do
    Component ("p" .. n .. "." .. (ENV_HABLA_XMPP_COMPONENT_DOMAIN or "chat.localhost"))
      component_secret = ENV_HABLA_XMPP_COMPONENT_SECRET
      modules_enabled = { "habla_hold" }
  end
end
