-- GET /metrics, as a scraper does, but without pause: what one scrape costs.
request = function()
  return wrk.format("GET", "/metrics")
end

done = function(summary, latency, requests)
  io.write(string.format("p50_ms=%.2f p99_ms=%.2f\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
