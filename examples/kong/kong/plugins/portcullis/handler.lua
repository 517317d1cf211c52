-- Kong plugin `portcullis`: asks Portcullis's forward-auth door whether a request may pass,
-- describing it in X-Forwarded-Method, -Uri, -Host, -Proto and -For. A 2xx answer lets it on
-- with the identity headers the door set; any other answer (401, 403, a 302 to a login page,
-- 429, 400, 503) goes back to the client as it is: status, challenge and body.
--
-- Untested against a live Kong (it cannot be installed where Portcullis is built); the tests
-- check its syntax with Lua 5.1 and run it against stand-ins for Kong's PDK and resty.http.
local http = require "resty.http"

local kong = kong
local ipairs = ipairs
local type = type

local PortcullisHandler = {
  -- After Kong's own authentication plugins (key-auth 1250, jwt 1450), before
  -- rate-limiting (910).
  PRIORITY = 1000,
  VERSION = "0.1.0",
}

-- Headers of a refusal the client needs besides the body.
local REFUSAL_HEADERS = {
  "Content-Type", "WWW-Authenticate", "Location", "Retry-After",
  "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "X-Request-Id",
}

-- The original host as the client named it, with its port unless it is the scheme's.
local function forwarded_host()
  local host = kong.request.get_forwarded_host()
  local port = kong.request.get_forwarded_port()
  local scheme = kong.request.get_forwarded_scheme()
  if port and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)) then
    return host .. ":" .. port
  end
  return host
end

function PortcullisHandler:access(conf)
  -- Client copies of the identity headers never reach the upstream, allowed or not.
  for _, name in ipairs(conf.identity_headers) do
    kong.service.request.clear_header(name)
  end

  local headers = {
    ["X-Forwarded-Method"] = kong.request.get_method(),
    -- The raw target (path and query) as the client sent it: the door canonicalises it
    -- and refuses ambiguous spellings.
    ["X-Forwarded-Uri"] = ngx.var.request_uri,
    ["X-Forwarded-Host"] = forwarded_host(),
    ["X-Forwarded-Proto"] = kong.request.get_forwarded_scheme(),
    -- The client's address as Kong's trusted_ips and real_ip settings resolve it.
    ["X-Forwarded-For"] = kong.client.get_forwarded_ip(),
  }
  for _, name in ipairs(conf.forward_headers) do
    local value = kong.request.get_header(name)
    if value then
      headers[name] = value
    end
  end

  local httpc = http.new()
  httpc:set_timeout(conf.timeout)
  local res, err = httpc:request_uri(conf.door_url, {
    method = "GET",
    headers = headers,
    keepalive_timeout = conf.keepalive,
  })
  if not res then
    kong.log.err("portcullis: the door did not answer: ", err)
    return kong.response.exit(503,
      '{"error":"authorization_unavailable"}\n',
      { ["Content-Type"] = "application/json" })
  end

  if res.status >= 200 and res.status < 300 then
    for _, name in ipairs(conf.identity_headers) do
      local value = res.headers[name]
      -- One value each: a repeated identity header is not passed on.
      if type(value) == "string" then
        kong.service.request.set_header(name, value)
      end
    end
    return
  end

  local out = {}
  for _, name in ipairs(REFUSAL_HEADERS) do
    local value = res.headers[name]
    if value then
      out[name] = value
    end
  end
  return kong.response.exit(res.status, res.body, out)
end

return PortcullisHandler
