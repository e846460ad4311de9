local home = os.getenv("HOME")
function format(r) return nil end
