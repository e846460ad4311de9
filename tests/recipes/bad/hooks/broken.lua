function format(record, ctx)
  return { prompt = record.x .. , response = "" }
end
