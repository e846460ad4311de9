os.execute("true")
function format(r) return nil end
