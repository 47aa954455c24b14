-- wrk script of bench/peer_proxy.py: the same OpenAI-shaped chat POSTed to either proxy
-- (the Authorization header comes on wrk's command line), and one machine-readable summary line.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Tu es l\'assistant d\'une copropriété."}, {"role": "user", "content": "Bonjour, résume ce PV en une phrase."}], "max_tokens": 32, "temperature": 0}'

done = function(summary, latency, requests)
  -- errors.status: responses with a status >= 400 (wrk's "Non-2xx or 3xx responses").
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, ' ..
    '"status_errors": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, summary.errors.status, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout))
end
