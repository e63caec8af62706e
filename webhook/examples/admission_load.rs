//! Load generator for the webhook's HTTPS endpoint (`make load`): POSTs one AdmissionReview body
//! to `/validate`, either as a burst (`--rate 0`: all at once, at most `--concurrency` in flight) or
//! open-loop at a fixed rate (`--rate 500`: a request every 2 ms whatever the answers take), and
//! prints one JSON line: requests, errors, achieved rate, p50/p99/max latency in milliseconds.
//!
//! Bounded in count (`--count`) and refused for any address but loopback and the e2e world's own
//! networks (pods 10.244.0.0/16, the node link 10.250.255.0/30): it is a test tool, not a weapon.
//!
//! ```sh
//! cargo run --release -p webhook --example admission_load -- --url https://10.244.0.7:8443/validate \
//!     --server-name virtrigaud-webhook.virtrigaud-system.svc --ca ca.crt --body review.json \
//!     --rate 500 --count 5000
//! ```

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::sync::Semaphore;

#[derive(Parser)]
struct Args {
    /// The webhook's validate URL, e.g. https://10.244.0.7:8443/validate.
    #[arg(long)]
    url: String,
    /// PEM CA that signed the webhook's serving certificate.
    #[arg(long)]
    ca: PathBuf,
    /// The name the certificate is for (as the apiserver dials it, e.g.
    /// virtrigaud-webhook.virtrigaud-system.svc): sent and verified instead of the URL's address.
    #[arg(long)]
    server_name: Option<String>,
    /// The AdmissionReview JSON to send.
    #[arg(long)]
    body: PathBuf,
    /// Requests per second; 0: all at once (a burst).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// How many requests in all (at most 100000).
    #[arg(long, default_value_t = 500)]
    count: u32,
    /// Most requests in flight.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
}

/// Whether the tool may send traffic to `ip`: loopback, or the e2e world's pod and node networks.
fn allowed(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback() || (a, b) == (10, 244) || (a, b, c) == (10, 250, 255)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let mut url = reqwest::Url::parse(&args.url).map_err(|e| format!("--url: {e}"))?;
    let ip: Ipv4Addr = url
        .host_str()
        .and_then(|h| h.parse().ok())
        .ok_or("--url must name an IPv4 address")?;
    if !allowed(ip) {
        return Err(format!(
            "{ip} is outside loopback and the e2e world's networks: refused"
        ));
    }
    if args.count == 0 || args.count > 100_000 {
        return Err("--count must be 1..=100000".into());
    }
    let ca = std::fs::read(&args.ca).map_err(|e| format!("{}: {e}", args.ca.display()))?;
    let ca = reqwest::Certificate::from_pem(&ca).map_err(|e| format!("--ca: {e}"))?;
    let body = std::fs::read(&args.body).map_err(|e| format!("{}: {e}", args.body.display()))?;
    let port = url.port_or_known_default().unwrap_or(443);
    let mut builder = reqwest::Client::builder();
    if let Some(name) = &args.server_name {
        url.set_host(Some(name))
            .map_err(|e| format!("--server-name: {e}"))?;
        builder = builder.resolve(name, (ip, port).into());
    }
    let client = builder
        .add_root_certificate(ca)
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;

    let gate = Arc::new(Semaphore::new(args.concurrency));
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.count as usize);
    for i in 0..args.count {
        if let Some(every) = interval {
            tokio::time::sleep_until((start + every * i).into()).await;
        }
        let (client, url, body, gate) = (client.clone(), url.clone(), body.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let sent = Instant::now();
            let answer = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let ok = match answer {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            (sent.elapsed(), ok)
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut errors = 0u32;
    for t in tasks {
        let (took, ok) = t.await.map_err(|e| e.to_string())?;
        latencies.push(took);
        errors += u32::from(!ok);
    }
    let wall = start.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1e3
    };
    println!(
        "{{\"requests\": {}, \"errors\": {errors}, \"seconds\": {:.3}, \"rate\": {:.1}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}, \"max_ms\": {:.2}}}",
        latencies.len(),
        wall.as_secs_f64(),
        latencies.len() as f64 / wall.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn only_loopback_and_the_worlds_networks() {
        for ok in ["127.0.0.1", "10.244.0.7", "10.250.255.2"] {
            assert!(allowed(ok.parse().unwrap()), "{ok}");
        }
        for no in ["10.0.0.1", "192.0.2.1", "10.250.254.1", "8.8.8.8"] {
            assert!(!allowed(no.parse().unwrap()), "{no}");
        }
    }
}
