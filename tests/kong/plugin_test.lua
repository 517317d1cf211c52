-- Runs examples/kong's `portcullis` plugin against stand-ins for Kong's PDK, ngx and
-- resty.http (Lua 5.1 / LuaJIT semantics, as Kong's): what it sends the door, what it sets
-- upstream and what it answers the client. Run from the repository root:
--   lua5.1 tests/kong/plugin_test.lua
-- It proves the plugin's logic, not its fit to a live Kong.
package.path = "examples/kong/?.lua;" .. package.path

local failures = 0
local function check(cond, what)
  if not cond then
    failures = failures + 1
    io.stderr:write("FAIL: " .. what .. "\n")
  end
end

-- Case-insensitive header table, as resty.http's: `pairs` gives the names as received, a
-- lookup ignores case.
local function headers_of(t)
  local h, out = {}, {}
  for k, v in pairs(t) do
    h[k:lower()] = v
    out[k] = v
  end
  return setmetatable(out, {
    __index = function(_, k) return h[k:lower()] end,
  })
end

-- The scenario a test sets: the client's request and the door's answer.
local scenario

package.loaded["resty.http"] = {
  new = function()
    return {
      set_timeout = function(_, ms) scenario.timeout = ms end,
      request_uri = function(_, uri, params)
        scenario.door_uri = uri
        scenario.door_request = params
        if scenario.door == nil then return nil, "connection refused" end
        return {
          status = scenario.door.status,
          headers = headers_of(scenario.door.headers),
          body = scenario.door.body,
        }
      end,
    }
  end,
}

package.loaded["kong.db.schema.typedefs"] = {
  protocols_http = { type = "set" },
  no_consumer = { type = "foreign" },
  header_name = { type = "string" },
  url = function(t) t.type = "string"; return t end,
}

local EXIT = {}

ngx = { var = setmetatable({}, {
  __index = function(_, k)
    if k == "request_uri" then return scenario.request_uri end
    return scenario.vars[k]
  end,
  __newindex = function(_, k, v) scenario.vars[k] = v end,
}) }

kong = {
  request = {
    get_method = function() return scenario.method end,
    get_forwarded_host = function() return scenario.host end,
    get_forwarded_port = function() return scenario.port end,
    get_forwarded_scheme = function() return scenario.scheme end,
    get_header = function(name) return scenario.client_headers[name:lower()] end,
    -- The request's headers as they stand (ngx.req.get_headers: what clear_header left),
    -- with "truncated" past `max`.
    get_headers = function(max)
      max = max or 100
      local out, n = {}, 0
      for k, v in pairs(scenario.upstream) do
        n = n + 1
        if n > max then return out, "truncated" end
        out[k] = v
      end
      return out
    end,
  },
  client = { get_forwarded_ip = function() return "203.0.113.7" end },
  service = { request = {
    clear_header = function(name) scenario.upstream[name:lower()] = nil end,
    set_header = function(name, value) scenario.upstream[name:lower()] = value end,
  } },
  response = {
    exit = function(status, body, headers)
      -- Kong reads the headers of an exit case-insensitively.
      scenario.exit = { status = status, body = body, headers = headers_of(headers or {}) }
      error(EXIT)
    end,
    set_header = function(name, value) scenario.response[name:lower()] = value end,
    add_header = function(name, value)
      local v = scenario.response[name:lower()]
      scenario.response[name:lower()] = v and (v .. ", " .. value) or value
    end,
  },
  ctx = { plugin = {} },
  log = { err = function() end },
}

local handler = require "kong.plugins.portcullis.handler"
local schema = require "kong.plugins.portcullis.schema"
check(schema.name == "portcullis", "schema names the plugin")

-- The defaults of the schema's config fields, as Kong would fill them.
local conf = { door_url = "http://127.0.0.1:8082/auth" }
for _, f in ipairs(schema.fields) do
  if f.config then
    for _, field in ipairs(f.config.fields) do
      for name, def in pairs(field) do
        if conf[name] == nil then conf[name] = def.default end
      end
    end
  end
end

local function run(s)
  scenario = s
  s.method = s.method or "GET"
  s.host, s.port, s.scheme = s.host or "app.example", s.port or 443, s.scheme or "https"
  s.client_headers = s.client_headers or {}
  s.vars = {}
  s.response = {}
  kong.ctx.plugin = {}
  -- The upstream request starts as the client's.
  s.upstream = {}
  for k, v in pairs(s.client_headers) do s.upstream[k] = v end
  local ok, err = pcall(handler.access, handler, conf)
  if not ok and err ~= EXIT then error(err) end
  -- The upstream's answer, on its way to the client.
  if not s.exit then handler.header_filter(handler, conf) end
  return s
end

-- Allowed: the description, the forwarded credential, identity from the door only, and
-- nothing the door names for removal, in any spelling.
local s = run {
  request_uri = "/api/orders?x=1",
  client_headers = {
    authorization = "Bearer t", ["x-user-id"] = "root", ["x-tenant-id"] = "evil",
    ["x-user_id"] = "admin", ["x_user-id"] = "admin2", ["x_real_ip"] = "10.0.0.1",
    ["x-real-ip"] = "10.0.0.1", ["x-forwarded-host"] = "evil.example",
    forwarded = "for=10.0.0.1", ["x-original-url"] = "/admin", ["x_original_url"] = "/admin",
    ["x-http-method-override"] = "DELETE", ["true-client-ip"] = "10.0.0.2",
    ["x-forwarded-client-cert"] = "Hash=0", ["x-envoy-original-path"] = "/admin",
    ["x-ssl-client-verify"] = "SUCCESS", ["x_portcullis_user"] = "admin", ["x-kept"] = "1",
    ["x-portcullis-user"] = "admin", ["x-client-cert-chain"] = "x", ["x-envoy-internal"] = "true",
    ["x_forwarded_for"] = "10.9.9.9", ["x-forwarded_host"] = "evil.example",
    ["proxy-authorization"] = "Basic Zm9vOmJhcg==", ["proxy-connection"] = "keep-alive",
    ["trailer"] = "X-User-Id",
  },
  door = { status = 200, headers = {
    ["X-User-Id"] = "alice",
    ["X-Real-IP"] = "203.0.113.7",
    ["X-Forwarded-Host"] = "app.example",
    ["X-Portcullis-Remove"] = "authorization,x-user-id,x-tenant-id,x-original-url,"
      .. "x-http-method-override,true-client-ip",
  } },
}
local sent = s.door_request.headers
check(s.door_uri == conf.door_url, "asks the configured door")
check(s.door_request.method == "GET", "asks with GET")
check(sent["X-Forwarded-Method"] == "GET", "sends the method")
check(sent["X-Forwarded-Uri"] == "/api/orders?x=1", "sends the raw target")
check(sent["X-Forwarded-Host"] == "app.example", "sends the host, without the default port")
check(sent["X-Forwarded-Proto"] == "https", "sends the scheme")
check(sent["X-Forwarded-For"] == "203.0.113.7", "sends the client address")
check(sent["Authorization"] == "Bearer t", "forwards the credential")
check(s.timeout == 3000, "uses the configured timeout, past the door's own 2 s")
check(s.exit == nil, "an allowed request goes on")
check(s.upstream["x-user-id"] == "alice", "sets the door's x-user-id")
check(s.upstream["x-tenant-id"] == nil, "removes a client's identity header the door did not set")
check(s.upstream["x-real-ip"] == "203.0.113.7", "sets the door's x-real-ip")
check(s.upstream["x-forwarded-host"] == "app.example", "sets the door's x-forwarded-host")
for _, name in ipairs {
  "authorization", "x-user_id", "x_user-id", "x_real_ip", "forwarded", "x-original-url",
  "x_original_url", "x-http-method-override", "true-client-ip", "x-forwarded-client-cert",
  "x-envoy-original-path", "x-ssl-client-verify", "x_portcullis_user", "x-portcullis-user",
  "x-client-cert-chain", "x-envoy-internal", "x_forwarded_for", "x-forwarded_host",
  "proxy-authorization", "proxy-connection", "trailer",
} do
  check(s.upstream[name] == nil, "removes the client's " .. name)
end
check(s.upstream["x-kept"] == "1", "keeps what the door does not name")

-- A credential the door does not name (its authenticator does not strip) goes on.
s = run {
  request_uri = "/",
  client_headers = { authorization = "Bearer t" },
  door = { status = 200, headers = { ["X-Portcullis-Remove"] = "x-user-id" } },
}
check(s.upstream["authorization"] == "Bearer t", "keeps a credential the door does not name")

-- Too many headers to clean: refused, never forwarded half-cleaned.
local many = {}
for i = 1, 1001 do many["x-h" .. i] = "v" end
s = run { request_uri = "/", client_headers = many,
          door = { status = 200, headers = { ["X-Portcullis-Remove"] = "x-original-url" } } }
check(s.exit and s.exit.status == 400, "refuses a request with too many headers")

-- A non-default port is part of the host.
s = run { request_uri = "/", port = 8443,
          door = { status = 204, headers = { ["X-Portcullis-Remove"] = "x-original-url" } } }
check(s.door_request.headers["X-Forwarded-Host"] == "app.example:8443", "keeps a non-default port")

-- A repeated identity header from the door is not passed on.
s = run { request_uri = "/", door = { status = 200, headers = {
  ["X-User-Id"] = { "a", "b" }, ["X-Portcullis-Remove"] = "x-original-url" } } }
check(s.upstream["x-user-id"] == nil, "refuses a repeated identity header")

-- Refused: status, challenge and body as the door gave them; nothing else.
local body = '{"error":"missing_credential","request_id":"r1"}\n'
s = run {
  request_uri = "/api/orders",
  door = { status = 401, body = body, headers = {
    ["Content-Type"] = "application/json",
    ["WWW-Authenticate"] = 'Bearer realm="portcullis"',
    ["X-Request-Id"] = "r1",
    ["X-Portcullis-Error"] = "missing_credential",
  } },
}
check(s.exit and s.exit.status == 401, "answers the door's 401")
check(s.exit and s.exit.body == body, "with the door's body")
check(s.exit and s.exit.headers["WWW-Authenticate"] == 'Bearer realm="portcullis"', "and its challenge")
check(s.exit and s.exit.headers["X-Request-Id"] == "r1", "and its request id")
check(s.exit and s.exit.headers["X-Portcullis-Error"] == nil, "but not the door's own")

s = run {
  request_uri = "/limited",
  door = { status = 429, body = "{}", headers = { ["Retry-After"] = "42", ["RateLimit-Limit"] = "1" } },
}
check(s.exit and s.exit.status == 429, "answers 429")
check(s.exit and s.exit.headers["Retry-After"] == "42", "with Retry-After")

s = run {
  request_uri = "/app",
  client_headers = { accept = "text/html" },
  door = { status = 302, headers = { Location = "https://login.example/start?rd=x" } },
}
check(s.door_request.headers["Accept"] == "text/html", "forwards Accept")
check(s.exit and s.exit.status == 302, "answers the login redirect")
check(s.exit and s.exit.headers["Location"] == "https://login.example/start?rd=x", "with its Location")

-- A WebSocket: the door sees the upgrade and the origin (Kong relays the upgrade itself).
s = run {
  request_uri = "/ws",
  client_headers = { upgrade = "websocket", origin = "https://evil.example",
                     ["access-control-request-method"] = "GET" },
  door = { status = 403, headers = {}, body = "{}" },
}
check(s.door_request.headers["Upgrade"] == "websocket", "forwards Upgrade")
check(s.door_request.headers["Origin"] == "https://evil.example", "forwards Origin")
check(s.door_request.headers["Access-Control-Request-Method"] == "GET", "forwards a preflight's method")
check(s.exit and s.exit.status == 403, "answers the door's refusal of the upgrade")

-- A stripped cookie credential among others: the door's `cookie` replaces the client's.
s = run {
  request_uri = "/api/orders",
  client_headers = { cookie = "session=K1; theme=dark" },
  door = { status = 200, headers = { cookie = "theme=dark", ["X-Portcullis-Remove"] = "x-original-url" } },
}
check(s.upstream["cookie"] == "theme=dark", "replaces Cookie with the door's rest")
-- And a repeated credential reaches the door whole.
s = run {
  request_uri = "/api/orders",
  client_headers = { authorization = { "Bearer a", "Bearer b" } },
  door = { status = 400, headers = {}, body = "{}" },
}
check(type(s.door_request.headers["Authorization"]) == "table", "forwards every Authorization")
-- Past Kong's default of 100 fields too.
local crowded = { authorization = { "Bearer a", "Bearer b" } }
for i = 1, 150 do crowded["x-f" .. i] = "v" end
s = run { request_uri = "/api/orders", client_headers = crowded,
          door = { status = 400, headers = {}, body = "{}" } }
check(type(s.door_request.headers["Authorization"]) == "table",
  "forwards every Authorization past 100 fields")
-- X-Forwarded-For: the client address, not appended to the client's.
s = run {
  request_uri = "/api/orders",
  client_headers = { ["x-forwarded-for"] = "6.6.6.6" },
  door = { status = 200, headers = { ["X-Portcullis-Remove"] = "x-original-url" } },
}
check(s.vars.upstream_x_forwarded_for == "203.0.113.7", "sets $upstream_x_forwarded_for")

-- An identity header Portcullis sets that identity_headers does not name (and the identity
-- assertion): set from the door in every spelling, never left as the client sent it. The
-- rule's rate-limit room and CORS headers go on the client's answer, not upstream.
s = run {
  request_uri = "/api/orders",
  client_headers = { ["x-user-email"] = "ceo@corp", ["x_user_email"] = "ceo2@corp",
                     ["x-user.email"] = "ceo3@corp", origin = "https://app.example" },
  door = { status = 200, headers = {
    ["X-User-Email"] = "svc@corp", ["X-Portcullis-Assertion"] = "eyJ.x.y",
    ["RateLimit-Remaining"] = "9", ["Access-Control-Allow-Origin"] = "https://app.example",
    ["Vary"] = "Origin", ["Cache-Control"] = "no-store", ["Content-Length"] = "0",
    ["X-Request-Id"] = "r2", ["X-Portcullis-Remove"] = "x-original-url",
  } },
}
check(s.exit == nil, "an allowed request goes on")
check(s.upstream["x-user-email"] == "svc@corp", "sets an identity header identity_headers lacks")
check(s.upstream["x_user_email"] == nil, "and removes the client's other spellings")
check(s.upstream["x-portcullis-assertion"] == "eyJ.x.y", "sets the identity assertion")
check(s.upstream["ratelimit-remaining"] == nil and s.upstream["vary"] == nil
  and s.upstream["access-control-allow-origin"] == nil and s.upstream["cache-control"] == nil,
  "sets none of the response's headers upstream")
check(s.response["ratelimit-remaining"] == "9", "gives the client the rate-limit room")
check(s.response["access-control-allow-origin"] == "https://app.example", "and the CORS headers")
check(s.response["vary"] == "Origin", "and Vary")
check(s.response["cache-control"] == nil, "but not the door's own Cache-Control")

-- A 2xx that is no answer of the door (no removal list): never through.
s = run { request_uri = "/", client_headers = { ["x-user-id"] = "root" },
          door = { status = 200, headers = { ["X-User-Id"] = "alice" } } }
check(s.exit and s.exit.status == 503, "refuses a 2xx without x-portcullis-remove")
check(s.exit and s.exit.headers["Retry-After"] == "1", "with Retry-After")

-- A refusal carries the rule's CORS headers and Vary to the client.
s = run {
  request_uri = "/api/orders",
  door = { status = 401, body = "{}", headers = {
    ["Access-Control-Allow-Origin"] = "https://app.example", ["Vary"] = "Origin",
    ["Cache-Control"] = "no-store", ["Connection"] = "keep-alive",
  } },
}
check(s.exit and s.exit.headers["Access-Control-Allow-Origin"] == "https://app.example",
  "passes a refusal's CORS header")
check(s.exit and s.exit.headers["Vary"] == "Origin", "and its Vary")
check(s.exit and s.exit.headers["Connection"] == nil, "but not the door's hop-by-hop ones")

-- Every spelling of a forwarded credential reaches the door, which refuses it twice given.
s = run {
  request_uri = "/public",
  client_headers = { ["x_api_key"] = "unverified" },
  door = { status = 400, headers = {}, body = "{}" },
}
check(s.door_request.headers["x_api_key"] == "unverified", "forwards X_Api_Key to the door")
check(s.exit and s.exit.status == 400, "answers the door's refusal")

-- The door unreachable: 503, never through.
s = run { request_uri = "/api/orders", client_headers = { ["x-user-id"] = "root" }, door = nil }
check(s.exit and s.exit.status == 503, "answers 503 when the door does not answer")
check(s.upstream["x-user-id"] == nil, "and the client's identity header is gone anyway")

if failures > 0 then
  io.stderr:write(failures .. " check(s) failed\n")
  os.exit(1)
end
print("ok")
