-- Configuration of the `portcullis` plugin: where Portcullis's forward-auth door is, and
-- which headers go to it and come back from it.
local typedefs = require "kong.db.schema.typedefs"

return {
  name = "portcullis",
  fields = {
    { protocols = typedefs.protocols_http },
    { consumer = typedefs.no_consumer },
    { config = {
        type = "record",
        fields = {
          -- The door, e.g. http://127.0.0.1:8082/auth: the `forward-auth` listener of
          -- examples/portcullis/portcullis.yaml (a forward_auth door without status_map).
          { door_url = typedefs.url { required = true } },
          -- Milliseconds to connect, send and read; past it the request gets 503. Longer
          -- than the door's own deadline (2 s by default), so the door's answer, with its
          -- reason, comes first.
          { timeout = { type = "integer", default = 3000, gt = 0 } },
          -- Milliseconds an idle connection to the door is kept for reuse.
          { keepalive = { type = "integer", default = 60000, gt = 0 } },
          -- Client headers the door reads: credentials, and Accept for login redirects.
          { forward_headers = {
              type = "array",
              elements = typedefs.header_name,
              -- Upgrade and Origin: Kong relays a WebSocket by itself, so the door must see
              -- the upgrade asked for (and from which origin) to refuse it for a rule that
              -- does not relay one. The preflight fields describe a preflight as the client
              -- sent it (the door decides it as any request; it answers none itself).
              default = { "Authorization", "Cookie", "Accept", "X-Api-Key", "X-Request-Id",
                          "Origin", "Upgrade", "Access-Control-Request-Method",
                          "Access-Control-Request-Headers" },
          } },
          -- Identity headers: removed from every request, then set from the door's answer
          -- to an allowed one. List every name Portcullis's identity_headers configures.
          { identity_headers = {
              type = "array",
              elements = typedefs.header_name,
              default = { "X-User-Id", "X-User-Roles", "X-Tenant-Id", "X-Api-Key-Id" },
          } },
        },
    } },
  },
}
