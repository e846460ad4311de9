-- a hook with a syntax error, for test_lua_host.c
function format(r)
  return {prompt = r.x response = 1}
end
