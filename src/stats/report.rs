//! Renders [`Stats`]: plain text for a terminal, JSON for scripts, and one
//! self-contained HTML page (inline SVG chart, inline CSS, nothing fetched,
//! no scripts).

use std::fmt::Write as _;

use super::{Peer, Stats, Tally};

/// Plain text, the default output.
pub fn text(stats: &Stats, top: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "blackpony stats: {} lines read, {} counted",
        stats.lines, stats.records
    );
    let _ = writeln!(
        out,
        "\nper day (encrypted = TLS + XPONY; authenticated = peer verified)"
    );
    for (day, d) in &stats.days {
        let _ = writeln!(out, "{day}");
        text_tally(&mut out, "inbound sessions", &d.inbound_sessions, false);
        text_tally(&mut out, "inbound messages", &d.inbound_messages, false);
        text_tally(&mut out, "outbound delivered", &d.outbound_delivered, true);
    }
    let _ = writeln!(
        out,
        "\nclients still sending in plaintext (inbound, by address)"
    );
    text_peers(&mut out, &stats.top_plaintext_senders(top), |p| {
        format!(
            "plaintext sessions {}  of {}  messages {}",
            p.sessions.plaintext,
            p.sessions.total(),
            p.messages.plaintext
        )
    });
    let _ = writeln!(out, "\ndomains still receiving in plaintext (outbound)");
    text_peers(&mut out, &stats.top_plaintext_receivers(top), |p| {
        format!(
            "plaintext deliveries {}  of {}",
            p.messages.plaintext,
            p.messages.total()
        )
    });
    let _ = writeln!(out, "\nrefusals by reason (inbound)");
    if stats.refusals.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for (reason, n) in &stats.refusals {
        let _ = writeln!(out, "  {reason:<28} {n}");
    }
    let _ = writeln!(out, "\noutbound delivery attempts by result");
    if stats.results.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for (status, n) in &stats.results {
        let _ = writeln!(out, "  {:<28} {n}", status.as_str());
    }
    out
}

fn text_tally(out: &mut String, label: &str, t: &Tally, authenticated: bool) {
    let share = t
        .encrypted_percent()
        .map_or_else(|| "-".to_string(), |p| format!("{p:.1}%"));
    let _ = write!(
        out,
        "  {label:<20} total {:<6} plaintext {:<6} tls {:<6} xpony {:<6}",
        t.total(),
        t.plaintext,
        t.tls,
        t.xpony
    );
    if authenticated {
        let _ = write!(out, " authenticated {:<6}", t.authenticated);
    }
    let _ = writeln!(out, " encrypted {share}");
}

fn text_peers(out: &mut String, peers: &[(&str, &Peer)], describe: impl Fn(&Peer) -> String) {
    if peers.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for (name, p) in peers {
        let _ = writeln!(out, "  {name:<40} {}", describe(p));
    }
}

/// JSON (`--json`): the same figures, for scripts.
pub fn json(stats: &Stats, top: usize) -> String {
    let mut out = String::from("{");
    let _ = write!(
        out,
        "\"lines\":{},\"records\":{},\"days\":",
        stats.lines, stats.records
    );
    json_object(
        &mut out,
        stats.days.iter().map(|(day, d)| {
            (
                day.as_str(),
                format!(
                    "{{\"inbound_sessions\":{},\"inbound_messages\":{},\"outbound_delivered\":{}}}",
                    json_tally(&d.inbound_sessions),
                    json_tally(&d.inbound_messages),
                    json_tally(&d.outbound_delivered)
                ),
            )
        }),
    );
    for (key, peers) in [("senders", &stats.senders), ("receivers", &stats.receivers)] {
        let _ = write!(out, ",\"{key}\":");
        json_object(
            &mut out,
            peers.iter().map(|(name, p)| {
                (
                    name.as_str(),
                    format!(
                        "{{\"sessions\":{},\"messages\":{}}}",
                        json_tally(&p.sessions),
                        json_tally(&p.messages)
                    ),
                )
            }),
        );
    }
    out.push_str(",\"plaintext_senders\":");
    json_names(&mut out, &stats.top_plaintext_senders(top));
    out.push_str(",\"plaintext_receivers\":");
    json_names(&mut out, &stats.top_plaintext_receivers(top));
    out.push_str(",\"refusals\":");
    json_object(
        &mut out,
        stats
            .refusals
            .iter()
            .map(|(r, n)| (r.as_str(), n.to_string())),
    );
    out.push_str(",\"outbound_results\":");
    json_object(
        &mut out,
        stats
            .results
            .iter()
            .map(|(s, n)| (s.as_str(), n.to_string())),
    );
    out.push_str("}\n");
    out
}

/// `{"key":value,…}` from keys and already-encoded values.
fn json_object<'a>(out: &mut String, entries: impl Iterator<Item = (&'a str, String)>) {
    out.push('{');
    for (i, (key, value)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}:{value}", json_str(key));
    }
    out.push('}');
}

fn json_tally(t: &Tally) -> String {
    format!(
        "{{\"total\":{},\"plaintext\":{},\"tls\":{},\"xpony\":{},\"encrypted\":{},\"authenticated\":{}}}",
        t.total(),
        t.plaintext,
        t.tls,
        t.xpony,
        t.encrypted(),
        t.authenticated
    )
}

fn json_names(out: &mut String, peers: &[(&str, &Peer)]) {
    out.push('[');
    for (i, (name, _)) in peers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json_str(name));
    }
    out.push(']');
}

/// A JSON string (RFC 8259 §7).
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// HTML text (element content and attribute values).
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CHART_HEIGHT: u32 = 200;
const BAR_WIDTH: u32 = 18;
const DAY_WIDTH: u32 = 3 * BAR_WIDTH + 24;
const LEFT: u32 = 48;
const TOP: u32 = 20;

/// One page (`--html FILE`): the encrypted share per day as an SVG bar
/// chart (inbound sessions, inbound messages, outbound deliveries) and the
/// plaintext peers as tables.
pub fn html(stats: &Stats, top: usize) -> String {
    let mut out = String::new();
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <title>blackpony: how much mail was encrypted</title>\n<style>\n\
         body{font-family:sans-serif;margin:2em;color:#222;background:#fff}\n\
         table{border-collapse:collapse;margin:1em 0}\n\
         td,th{border:1px solid #bbb;padding:.2em .6em;text-align:right}\n\
         td:first-child,th:first-child{text-align:left}\n\
         .in-s{fill:#1b7f3b}.in-m{fill:#58b368}.out{fill:#1f5fa8}.plain{fill:#d9d9d9}\n\
         </style></head><body>\n<h1>How much mail was encrypted</h1>\n",
    );
    let _ = writeln!(
        out,
        "<p>{} log lines read, {} counted. Encrypted means TLS or XPONY.</p>",
        stats.lines, stats.records
    );
    chart(&mut out, stats);
    out.push_str("<h2>Per day</h2>\n<table><tr><th>day</th><th>inbound sessions</th><th>encrypted</th><th>inbound messages</th><th>encrypted</th><th>outbound delivered</th><th>encrypted</th><th>authenticated</th></tr>\n");
    for (day, d) in &stats.days {
        let pct = |t: &Tally| {
            t.encrypted_percent()
                .map_or_else(|| "-".to_string(), |p| format!("{p:.1}%"))
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html_escape(day),
            d.inbound_sessions.total(),
            pct(&d.inbound_sessions),
            d.inbound_messages.total(),
            pct(&d.inbound_messages),
            d.outbound_delivered.total(),
            pct(&d.outbound_delivered),
            d.outbound_delivered.authenticated
        );
    }
    out.push_str("</table>\n<h2>Clients still sending in plaintext</h2>\n");
    peer_table(
        &mut out,
        "client address",
        &stats.top_plaintext_senders(top),
        |p| (p.sessions.plaintext, p.sessions.total()),
    );
    out.push_str("<h2>Domains still receiving in plaintext</h2>\n");
    peer_table(
        &mut out,
        "recipient domain",
        &stats.top_plaintext_receivers(top),
        |p| (p.messages.plaintext, p.messages.total()),
    );
    out.push_str("<h2>Refusals by reason</h2>\n<table><tr><th>reason</th><th>count</th></tr>\n");
    for (reason, n) in &stats.refusals {
        let _ = writeln!(out, "<tr><td>{}</td><td>{n}</td></tr>", html_escape(reason));
    }
    out.push_str("</table>\n</body></html>\n");
    out
}

fn peer_table(
    out: &mut String,
    what: &str,
    peers: &[(&str, &Peer)],
    figures: impl Fn(&Peer) -> (u64, u64),
) {
    let _ = writeln!(
        out,
        "<table><tr><th>{what}</th><th>in plaintext</th><th>of</th></tr>"
    );
    for (name, p) in peers {
        let (plain, total) = figures(p);
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{plain}</td><td>{total}</td></tr>",
            html_escape(name)
        );
    }
    out.push_str("</table>\n");
}

/// The SVG chart: per day three bars (inbound sessions, inbound messages,
/// outbound deliveries), each as tall as its encrypted share, on a grey
/// full-height bar; a day without any of them shows no bar for it.
fn chart(out: &mut String, stats: &Stats) {
    let days = stats.days.len().max(1) as u32;
    // Wide enough for the legend below the bars, however few days there are.
    let width = (LEFT + days * DAY_WIDTH + 20).max(LEFT + 3 * 150 + 20);
    let height = TOP + CHART_HEIGHT + 60;
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"encrypted share per day\">"
    );
    for pct in [0u32, 50, 100] {
        let y = TOP + CHART_HEIGHT - CHART_HEIGHT * pct / 100;
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#999\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{pct}%</text>",
            width - 10,
            LEFT - 4,
            y + 4
        );
    }
    for (i, (day, d)) in stats.days.iter().enumerate() {
        let x0 = LEFT + 8 + i as u32 * DAY_WIDTH;
        let bars = [
            ("in-s", "inbound sessions", &d.inbound_sessions),
            ("in-m", "inbound messages", &d.inbound_messages),
            ("out", "outbound delivered", &d.outbound_delivered),
        ];
        for (j, (class, label, tally)) in bars.iter().enumerate() {
            let Some(pct) = tally.encrypted_percent() else {
                continue;
            };
            let x = x0 + j as u32 * BAR_WIDTH;
            let h = (f64::from(CHART_HEIGHT) * pct / 100.0).round() as u32;
            let _ = writeln!(
                out,
                "<rect class=\"plain\" x=\"{x}\" y=\"{TOP}\" width=\"{}\" height=\"{CHART_HEIGHT}\"/>\
                 <rect class=\"{class}\" x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{h}\">\
                 <title>{} {label}: {pct:.1}% encrypted ({} of {})</title></rect>",
                BAR_WIDTH - 2,
                TOP + CHART_HEIGHT - h,
                BAR_WIDTH - 2,
                html_escape(day),
                tally.encrypted(),
                tally.total()
            );
        }
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            x0 + 3 * BAR_WIDTH / 2,
            TOP + CHART_HEIGHT + 16,
            html_escape(day)
        );
    }
    let y = TOP + CHART_HEIGHT + 40;
    for (k, (class, label)) in [
        ("in-s", "inbound sessions"),
        ("in-m", "inbound messages"),
        ("out", "outbound delivered"),
    ]
    .iter()
    .enumerate()
    {
        let x = LEFT + k as u32 * 150;
        let _ = writeln!(
            out,
            "<rect class=\"{class}\" x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"12\">{label}</text>",
            y - 10,
            x + 16,
            y
        );
    }
    out.push_str("</svg>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stats {
        let mut s = Stats::default();
        for line in [
            "2026-12-03T01:00:00Z blackpony/inbound[1]: session=1 disconnect client=unknown[192.0.2.1]:1 tls=none identity=none messages=2 refused=0",
            "2026-12-03T01:00:00Z blackpony/inbound[1]: session=2 disconnect client=unknown[192.0.2.1]:2 tls=TLSv1.3/X identity=none messages=1 refused=0",
            "2026-12-03T01:00:00Z blackpony/inbound[1]: session=3 refused=bad-syntax client=unknown[192.0.2.2]:1",
            "2026-12-04T01:00:00Z blackpony/deliver[2]: to=<a@<script>.test> relay=x[1.1.1.1]:25 tls=none verified=no level=plaintext delay=0 dsn=2.0.0 status=sent (250 ok)",
        ] {
            s.add_line(line, 2026);
        }
        s
    }

    #[test]
    fn json_is_valid_and_complete() {
        let v: serde_json::Value = serde_json::from_str(&json(&sample(), 10)).unwrap();
        assert_eq!(v["lines"], 4);
        assert_eq!(v["days"]["2026-12-03"]["inbound_sessions"]["total"], 2);
        assert_eq!(v["days"]["2026-12-03"]["inbound_messages"]["plaintext"], 2);
        assert_eq!(
            v["days"]["2026-12-04"]["outbound_delivered"]["plaintext"],
            1
        );
        assert_eq!(v["plaintext_senders"][0], "192.0.2.1");
        assert_eq!(v["plaintext_receivers"][0], "<script>.test");
        assert_eq!(v["refusals"]["bad-syntax"], 1);
        assert_eq!(v["outbound_results"]["sent"], 1);
        assert_eq!(json_str("a\"\\\u{1}"), "\"a\\\"\\\\\\u0001\"");
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let page = html(&sample(), 10);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<svg "));
        assert!(!page.contains("<script"), "a peer name became markup");
        assert!(page.contains("&lt;script&gt;.test"));
        for fetched in ["src=", "href=", "url(", "@import"] {
            assert!(!page.contains(fetched), "{fetched}");
        }
        // Day 1: inbound sessions 50% encrypted -> a bar of half the height.
        assert!(page.contains(&format!("height=\"{}\"", CHART_HEIGHT / 2)));
    }

    #[test]
    fn text_lists_the_figures() {
        let t = text(&sample(), 10);
        assert!(t.contains("4 lines read, 4 counted"), "{t}");
        assert!(t.contains("encrypted 50.0%"), "{t}");
        assert!(t.contains("192.0.2.1"), "{t}");
        assert!(t.contains("bad-syntax"), "{t}");
    }
}
