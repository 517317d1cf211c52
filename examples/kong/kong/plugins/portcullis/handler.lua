-- Kong plugin `portcullis`: asks Portcullis's forward-auth door whether a request may pass,
-- describing it in X-Forwarded-Method, -Uri, -Host, -Proto and -For. A 2xx answer lets it on
-- with the headers the door set (identity, X-Real-IP, X-Forwarded-Host) and without the ones
-- it names in `x-portcullis-remove` (spoofable headers, the credential it verified and
-- strips); any other answer (401, 403, a 302 to a login page, 429, 400, 503) goes back to the
-- client as it is: status, challenge and body.
--
-- Kong turns nginx's underscores_in_headers on, so the plugin removes a name in every `_`/`-`
-- spelling: PHP, CGI, WSGI and Puma read X_User_Id and X-User_Id as X-User-Id.
-- Kong's own template writes X-Real-IP ($remote_addr), X-Forwarded-Proto, -Host, -Port,
-- -Path and -Prefix from what its trusted_ips settings resolve, after the plugin runs (so
-- those come from Kong, not the door, and agree with how the plugin describes the request);
-- X-Forwarded-For it extends, the client's own value first, so the plugin sets
-- $upstream_x_forwarded_for (which the template sends) to the client address alone.
--
-- The door decides on the path the client asked for: the route must pass it to the service
-- as it is (`strip_path: false`, a service without a path, as kong.yml has it), or the rules
-- judge another path than the app serves.
--
-- Untested against a live Kong (it cannot be installed where Portcullis is built); the tests
-- check its syntax with Lua 5.1 and run it against stand-ins for Kong's PDK and resty.http.
local http = require "resty.http"

local kong = kong
local ipairs = ipairs
local pairs = pairs
local type = type

local PortcullisHandler = {
  -- After Kong's own authentication plugins (key-auth 1250, jwt 1450), before
  -- rate-limiting (910).
  PRIORITY = 1000,
  VERSION = "0.2.0",
}

-- Headers of the door's answer that are about its own message, not the client's request or
-- response: never copied anywhere.
local ANSWER_OWN = {
  ["content-length"] = true, ["content-type"] = true, ["date"] = true, ["server"] = true,
  ["connection"] = true, ["keep-alive"] = true, ["transfer-encoding"] = true, ["te"] = true,
  ["trailer"] = true, ["upgrade"] = true, ["proxy-connection"] = true,
  ["x-portcullis-remove"] = true, ["x-request-id"] = true,
}

-- Whether a header of an allow is for the client's response (the rule's rate-limit room and
-- CORS headers), not for the upstream request. `cache-control: no-store` is the door's own.
local function for_the_response(d)
  return d == "vary" or d:sub(1, 10) == "ratelimit-" or d:sub(1, 15) == "access-control-"
end

-- Set on an allowed request from the door's answer, besides the identity headers. `Cookie`:
-- when the door strips a cookie credential and other cookies remain, it answers the rest
-- in `cookie`, which replaces the client's (a lone cookie credential is named for removal).
local DECIDED_HEADERS = { "X-Real-IP", "X-Forwarded-Host", "Cookie" }

-- Headers only infrastructure in front of the app may set (client certificates, Envoy,
-- Portcullis). The door names them only when it saw them, and it sees only the
-- forward_headers, so they are removed here: by name, and by prefix.
local INFRASTRUCTURE = {
  ["x-forwarded-client-cert"] = true, ["x-client-cert"] = true, ["ssl-client-cert"] = true,
  ["x-ssl-cert"] = true, ["x-client-verify"] = true, ["x-client-dn"] = true,
  ["client-cert"] = true,
  ["client-cert-chain"] = true,
  ["x-client-certificate"] = true,
  ["x-client-subject"] = true,
  ["x-client-issuer"] = true,
  ["x-ssl-subject"] = true,
  ["x-ssl-issuer"] = true,
  -- Other auth proxies' identity headers, which an app moved from behind one may believe.
  ["remote-user"] = true,
  ["x-remote-user"] = true,
  ["x-forwarded-user"] = true,
  ["x-forwarded-email"] = true,
  ["x-forwarded-preferred-username"] = true,
  ["x-forwarded-groups"] = true,
  ["x-forwarded-access-token"] = true,
  ["x-webauth-user"] = true,
  ["x-goog-iap-jwt-assertion"] = true,
  ["x-arr-clientcert"] = true,
  ["x-ms-client-principal"] = true,
  ["remote-groups"] = true,
  ["remote-email"] = true,
  ["remote-name"] = true,
  ["x-auth-userid"] = true,
  ["x-auth-subject"] = true,
  ["x-auth-username"] = true,
  ["x-auth-roles"] = true,
  ["x-auth-groups"] = true,
  ["x-auth-audience"] = true,
}
local INFRASTRUCTURE_PREFIXES = { "x-envoy-", "x-portcullis-", "x-client-cert-", "x-ssl-client-", "x-forwarded-tls-client-cert", "x-amzn-mtls-", "x-auth-request-", "x-amzn-oidc-", "x-goog-authenticated-user-", "x-ms-client-principal-", "x-ms-token-", "x-pomerium-", "x-authentik-", "x-vouch-", "cf-access-authenticated-user-", "oidc-", "ssl-client-", "cloudfront-viewer-cert-", "cf-client-cert-", "cf-cert-" }

-- The forwarding family. Kong's template writes the dashed X-Forwarded-* and X-Real-IP over
-- the client's, but neither other spellings (X_Forwarded_For) nor Forwarded, which the door
-- does not see (it gets only the forward_headers): those go here.
local function is_forwarding(d)
  return d == "forwarded" or d == "x-real-ip" or d:sub(1, 12) == "x-forwarded-"
end

-- The most request headers read; a request with more is refused rather than half-cleaned.
local MAX_HEADERS = 1000

-- A header name as the door compares it: lowercase, `_` read as `-`.
local function dashed(name)
  return (name:lower():gsub("_", "-"))
end

local function has_prefix(name, prefixes)
  for _, p in ipairs(prefixes) do
    if name:sub(1, #p) == p then
      return true
    end
  end
  return false
end

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

-- Hop-by-hop headers nginx (and so Kong) passes on: meant for this hop, not the app.
local HOP_BY_HOP = { ["proxy-authorization"] = true, ["proxy-connection"] = true, ["trailer"] = true }

-- Removes from the upstream request every header whose dashed name is in `doomed` or is an
-- infrastructure, hop-by-hop header or Forwarded, and every spelling but the dashed one of a name in
-- `set` (about to be set) or of a forwarding header. false when the request has too many
-- headers to tell.
local function clear(doomed, set)
  local headers, err = kong.request.get_headers(MAX_HEADERS)
  if err == "truncated" then
    return false
  end
  for name in pairs(headers) do
    local d = dashed(name)
    local other_spelling = d ~= name:lower()
    if doomed[d] or INFRASTRUCTURE[d] or HOP_BY_HOP[d] or has_prefix(d, INFRASTRUCTURE_PREFIXES)
        or (set[d] and other_spelling)
        or (is_forwarding(d) and (other_spelling or d == "forwarded")) then
      kong.service.request.clear_header(name)
    end
  end
  return true
end

-- The door's answer unusable: never through, and said to be passing.
local function unavailable()
  return kong.response.exit(503, '{"error":"authorization_unavailable"}\n',
    { ["Content-Type"] = "application/json", ["Retry-After"] = "1",
      ["Cache-Control"] = "no-store" })
end

local function too_many_headers()
  return kong.response.exit(400, '{"error":"too_many_headers"}\n',
    { ["Content-Type"] = "application/json" })
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
  -- Every value of a repeated field (kong.request.get_header keeps the first): the door
  -- refuses two credentials, which the upstream would otherwise get both of. All of them:
  -- past the default 100 fields a second credential would go unseen.
  local all, err = kong.request.get_headers(MAX_HEADERS)
  if err == "truncated" then
    return too_many_headers()
  end
  -- Every spelling of a forwarded name (`X_Api_Key` beside `X-Api-Key`): Kong passes both
  -- on, and an app reads them as one, so the door must see both to judge (it refuses a
  -- credential given twice).
  local forwarded = {}
  for _, name in ipairs(conf.forward_headers) do
    forwarded[dashed(name)] = name
  end
  for name, value in pairs(all) do
    local configured = forwarded[dashed(name)]
    if configured then
      headers[configured:lower() == name:lower() and configured or name] = value
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
    return unavailable()
  end

  if res.status >= 200 and res.status < 300 then
    local listed = res.headers["x-portcullis-remove"]
    -- Every allow of the door names what to remove; a 2xx without the list is no allow of
    -- Portcullis's (a wrong door_url, a proxy in between answering for it): not let through.
    if listed == nil then
      kong.log.err("portcullis: a 2xx without x-portcullis-remove is no answer of the door")
      return unavailable()
    end
    -- What the door sets, and every name it lists, go in every spelling before anything is
    -- set (the door never lists a header it sets). What it sets is every header of its
    -- answer that is neither its own nor for the client's response, whether or not
    -- identity_headers names it: an identity header configured in Portcullis but not here
    -- (or the identity assertion) is set from the door, never left as the client sent it.
    local set, doomed, headers_set, response = {}, {}, {}, {}
    for _, list in ipairs({ conf.identity_headers, DECIDED_HEADERS }) do
      for _, name in ipairs(list) do
        set[dashed(name)] = true
        headers_set[#headers_set + 1] = name
      end
    end
    for name, value in pairs(res.headers) do
      local d = dashed(name)
      if for_the_response(d) then
        response[#response + 1] = { name, value }
      elseif not ANSWER_OWN[d] and d ~= "cache-control" and not set[d] then
        set[d] = true
        doomed[d] = true
        headers_set[#headers_set + 1] = name
      end
    end
    if type(listed) == "string" then
      listed = { listed }
    end
    for _, value in ipairs(listed or {}) do
      for name in value:gmatch("[^,%s]+") do
        doomed[dashed(name)] = true
        kong.service.request.clear_header(name)
      end
    end
    if not clear(doomed, set) then
      return too_many_headers()
    end
    for _, name in ipairs(headers_set) do
      local value = res.headers[name]
      -- One value each: a repeated header is not passed on.
      if type(value) == "string" then
        kong.service.request.set_header(name, value)
      end
    end
    -- The client address alone, not appended to the client's X-Forwarded-For.
    ngx.var.upstream_x_forwarded_for = kong.client.get_forwarded_ip()
    -- The rule's rate-limit room and CORS headers go on the upstream's answer.
    kong.ctx.plugin.response = response
    return
  end

  -- A refusal goes back as the door gave it: status, body, and every header but the door's
  -- own (its challenge, Location, Retry-After, rate-limit room, CORS headers, Vary,
  -- Cache-Control).
  local out = {}
  for name, value in pairs(res.headers) do
    local d = dashed(name)
    if d == "content-type" or d == "x-request-id"
        or not (ANSWER_OWN[d] or d:sub(1, 13) == "x-portcullis-") then
      out[name] = value
    end
  end
  return kong.response.exit(res.status, res.body, out)
end

function PortcullisHandler:header_filter()
  local response = kong.ctx.plugin.response
  if not response then
    return
  end
  for _, h in ipairs(response) do
    if dashed(h[1]) == "vary" then
      kong.response.add_header(h[1], h[2])
    else
      kong.response.set_header(h[1], h[2])
    end
  end
end

return PortcullisHandler
