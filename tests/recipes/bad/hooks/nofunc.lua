-- defines no lr function
function schedule(step) return 1 end
