-- Runs examples/apisix's two serverless functions (their sources are the files named by the
-- arguments: the pre-function's, then the post-function's) against stand-ins for APISIX's
-- core and ngx, with forward-auth between them as APISIX runs it: what the app would get.
--   lua5.1 tests/apisix/functions_test.lua PRE.lua POST.lua
-- tests/it/examples/clearing.rs extracts the sources from the YAML and runs this. It proves
-- the functions' logic, not their fit to a live APISIX.

local function load_function(path)
  local f = assert(io.open(path))
  local src = f:read("*a")
  f:close()
  local chunk = assert(loadstring(src, path))
  local fun = chunk()
  assert(type(fun) == "function", path .. " returns a function")
  return fun
end
local pre, post = load_function(arg[1]), load_function(arg[2])

local failures = 0
local function check(cond, what)
  if not cond then
    failures = failures + 1
    io.stderr:write("FAIL: " .. what .. "\n")
  end
end

-- The request as it stands: headers under the names the client spelled, the variables
-- written, and the response if a function ended it.
local req

-- ngx.req.set_header: every header of that name (any case, `_` and `-` as written) goes,
-- then the value, if any, is set.
local function set_header(name, value)
  for k in pairs(req.headers) do
    if k:lower() == name:lower() then req.headers[k] = nil end
  end
  if value ~= nil then req.headers[name] = value end
end

ngx = {
  req = {
    get_headers = function(max, raw)
      assert(raw, "raw names: the spelling decides what goes")
      local out, n = {}, 0
      for k, v in pairs(req.headers) do
        n = n + 1
        if n > max then return out, "truncated" end
        out[k] = v
      end
      return out
    end,
  },
  var = setmetatable({}, {
    __newindex = function(_, k, v)
      if req.missing_vars[k] then error("variable \"" .. k .. "\" not found for writing") end
      req.vars[k] = v
    end,
  }),
}

package.loaded["apisix.core"] = {
  request = {
    header = function(_, name)
      for k, v in pairs(req.headers) do
        if k:lower() == name:lower() then return v end
      end
    end,
    set_header = function(_, name, value) set_header(name, value) end,
  },
  response = {
    exit = function(status, body)
      req.exit = { status = status, body = body }
      return status
    end,
  },
}

-- What forward-auth copies from the door's answer (upstream_headers): newer APISIX sets
-- each, removing the request's when the answer lacks it.
local UPSTREAM_HEADERS = {
  "X-User-Id", "X-User-Roles", "X-Tenant-Id", "X-Api-Key-Id", "X-Request-Id",
  "X-Portcullis-Remove",
}

local function run(client_headers, door_headers, missing_vars)
  req = { headers = {}, vars = {}, missing_vars = missing_vars or {} }
  for k, v in pairs(client_headers) do req.headers[k] = v end
  local ctx = { var = {
    remote_addr = "203.0.113.7", host = "app.example", scheme = "https", server_port = "443",
  } }
  pre({}, ctx)
  if req.exit then return req end
  if door_headers then
    for _, name in ipairs(UPSTREAM_HEADERS) do
      local value
      for k, v in pairs(door_headers) do
        if k:lower() == name:lower() then value = v end
      end
      set_header(name, value)
    end
  end
  post({}, ctx)
  return req
end

local function has(r, name)
  for k in pairs(r.headers) do
    if k:lower() == name:lower() then return true end
  end
  return false
end

-- Allowed: every spoofed header goes, in every spelling; the door's identity arrives; the
-- credential it lists goes after it was read; the rest stays.
local spoofed = {
  "X-User-Id", "X-USER-ID", "X_User_Id", "X-User_Id", "X_Tenant-Id", "X-Real-IP", "X_Real_IP",
  "X-Forwarded-For", "X_Forwarded_For", "X-Forwarded-Host", "X-Forwarded-Proto",
  "X-Forwarded-Port", "Forwarded", "X-Original-URL", "X_Original_URL", "X-Original-Uri",
  "X-Forwarded-Uri", "X-Forwarded-Prefix", "X-HTTP-Method-Override", "True-Client-IP",
  "CF-Connecting-IP", "X-Forwarded-Client-Cert", "X-Client-Cert", "X-Client-Cert-Chain",
  "X-SSL-Client-Verify", "X-Envoy-Original-Path", "X-Envoy-Internal", "X-Portcullis-User",
  "X-Portcullis-Remove", "X_Portcullis_Assertion",
  -- Any other name with an underscore, as nginx with underscores_in_headers off.
  "X_Scope",
}
local client = { Authorization = "Bearer t", Cookie = "a=b", ["X-Kept"] = "1" }
for _, name in ipairs(spoofed) do client[name] = "spoofed" end
local r = run(client, {
  ["X-User-Id"] = "alice",
  ["X-Portcullis-Remove"] = "authorization,x-tenant-id,x-original-url",
})
check(r.exit == nil, "an allowed request goes on")
check(r.headers["X-User-Id"] == "alice", "the door's x-user-id arrives")
-- (The three APISIX writes again are checked for APISIX's values below.)
local rewritten = { ["x-forwarded-host"] = true, ["x-forwarded-proto"] = true,
                    ["x-forwarded-port"] = true }
for _, name in ipairs(spoofed) do
  if rewritten[name:lower()] then
    check(r.headers[name] ~= "spoofed", "replaces the client's " .. name)
  elseif name:lower() ~= "x-user-id" then
    check(not has(r, name), "removes the client's " .. name)
  end
end
for k, v in pairs(r.headers) do
  check(k:lower() ~= "x-user-id" or v == "alice", "no other x-user-id: " .. k)
end
check(not has(r, "authorization"), "removes the credential the door lists")
check(r.headers["Cookie"] == "a=b" and r.headers["X-Kept"] == "1", "keeps the rest")
check(r.vars.var_x_forwarded_for == "203.0.113.7", "X-Forwarded-For is the client APISIX saw (3.0 to 3.2)")
check(r.vars.var_x_forwarded_host == "app.example", "X-Forwarded-Host is the host decided")
check(r.vars.var_x_forwarded_proto == "https", "X-Forwarded-Proto is the scheme decided")
check(r.vars.var_x_forwarded_port == "443", "X-Forwarded-Port is APISIX's")
-- APISIX 3.18 writes these as request headers (its variables are maps): set again, from
-- what APISIX saw, after the prefix removal took the client's.
check(r.headers["X-Forwarded-Proto"] == "https", "X-Forwarded-Proto header is the scheme decided")
check(r.headers["X-Forwarded-Host"] == "app.example", "X-Forwarded-Host header is the host decided")
check(r.headers["X-Forwarded-Port"] == "443", "X-Forwarded-Port header is APISIX's")
check(not has(r, "x-forwarded-for"), "the client's X-Forwarded-For is gone")

-- A credential the door does not list goes on; no list, nothing more goes.
r = run({ Authorization = "Bearer t" }, { ["X-Portcullis-Remove"] = "x-user-id" })
check(r.headers["Authorization"] == "Bearer t", "keeps a credential the door does not list")
r = run({ Authorization = "Bearer t", ["X-Portcullis-Remove"] = "authorization" }, {})
check(r.headers["Authorization"] == "Bearer t", "a client's list is not the door's")
check(not has(r, "x-portcullis-remove"), "the list never reaches the app")

-- An APISIX whose template lacks one of the variables: the others are still reset.
r = run({ ["X-Forwarded-For"] = "10.9.9.9" }, {}, { var_x_forwarded_port = true })
check(r.exit == nil and r.vars.var_x_forwarded_host == "app.example", "a missing variable is skipped")

-- A repeated credential header: forward-auth would hand the door only the first value, and
-- the app would get the second unverified. Refused, in any spelling.
for _, h in ipairs({
  { Authorization = { "Bearer good", "Bearer forged" } },
  { Cookie = { "session=good", "session=forged; role=admin" } },
  { Cookie = "session=good", cookie = "session=forged" },
  { ["X-Api-Key"] = { "k1", "k2" } },
}) do
  r = run(h, { ["X-User-Id"] = "alice" })
  check(r.exit and r.exit.status == 400, "refuses a repeated credential header")
end
r = run({ Cookie = "session=good", Authorization = "Bearer t" }, { ["X-User-Id"] = "alice" })
check(r.exit == nil, "one of each goes on")

-- Too many headers to clean: refused, never forwarded half-cleaned.
local many = {}
for i = 1, 1001 do many["x-h" .. i] = "v" end
r = run(many, {})
check(r.exit and r.exit.status == 400, "refuses a request with too many headers")

if failures > 0 then
  io.stderr:write(failures .. " check(s) failed\n")
  os.exit(1)
end
print("ok")
