//! The reference pages under `docs/manual/` rendered into man(7) roff.
//!
//! The operator's reference (what each role does, what it refuses, its logs)
//! is written once, in Markdown that reads well in a checkout or on a forge,
//! and the man pages carry the same text: `blackpony man` appends the page's
//! Markdown after the OPTIONS that clap generates. Only the Markdown the
//! manual uses is understood — headings, paragraphs, `-` lists, tables,
//! fenced code, `code`, **bold**, *emphasis* and links — which keeps this a
//! page of code instead of a dependency.

/// Which manual page carries which Markdown reference (a file may serve
/// several pages: the outbound reference is the same for its three modes).
pub const MANUAL: &[(&str, &str)] = &[
    ("blackpony", include_str!("../../docs/manual/blackpony.md")),
    (
        "blackpony-inbound",
        include_str!("../../docs/manual/inbound.md"),
    ),
    (
        "blackpony-outbound",
        include_str!("../../docs/manual/outbound.md"),
    ),
    (
        "blackpony-deliver",
        include_str!("../../docs/manual/outbound.md"),
    ),
    (
        "blackpony-lmtp",
        include_str!("../../docs/manual/outbound.md"),
    ),
    (
        "blackpony-keygen",
        include_str!("../../docs/manual/xpony.md"),
    ),
    ("blackpony-pins", include_str!("../../docs/manual/xpony.md")),
    ("blackpony-seal", include_str!("../../docs/manual/seal.md")),
    ("blackpony-open", include_str!("../../docs/manual/seal.md")),
    (
        "blackpony-fetch",
        include_str!("../../docs/manual/fetch.md"),
    ),
    (
        "blackpony-stats",
        include_str!("../../docs/manual/stats.md"),
    ),
    (
        "blackpony-check",
        include_str!("../../docs/manual/check.md"),
    ),
    (
        "blackpony-tlsrpt",
        include_str!("../../docs/manual/tlsrpt.md"),
    ),
];

/// The Markdown reference for a page, if it has one.
pub fn manual_for(page: &str) -> Option<&'static str> {
    MANUAL.iter().find(|(p, _)| *p == page).map(|(_, md)| *md)
}

/// Renders the Markdown `md` as man(7) sections. The file's first-level
/// heading (its title, already in the NAME section) is left out; `##`
/// headings become sections, `###` subsections.
pub fn markdown_to_roff(md: &str) -> String {
    let mut out = String::new();
    let mut lines = md.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_end();
        if let Some(fence) = trimmed.strip_prefix("```") {
            let _language = fence;
            out.push_str(".PP\n.nf\n.RS 4\n");
            for code in lines.by_ref() {
                if code.trim_end().starts_with("```") {
                    break;
                }
                out.push_str(&escape_line(code));
                out.push('\n');
            }
            out.push_str(".RE\n.fi\n");
        } else if trimmed.starts_with("# ") || trimmed.is_empty() {
            continue;
        } else if let Some(title) = trimmed.strip_prefix("### ") {
            out.push_str(&format!(".SS \"{}\"\n", inline(title).replace('"', "")));
        } else if let Some(title) = trimmed.strip_prefix("## ") {
            out.push_str(&format!(
                ".SH \"{}\"\n",
                inline(&title.to_uppercase()).replace('"', "")
            ));
        } else if trimmed.starts_with('|') {
            let mut rows = vec![trimmed.to_string()];
            while let Some(next) = lines.peek() {
                if !next.trim_start().starts_with('|') {
                    break;
                }
                rows.push(next.trim_end().to_string());
                lines.next();
            }
            table(&rows, &mut out);
        } else if let Some(item) = trimmed.strip_prefix("- ") {
            let mut text = item.to_string();
            while let Some(next) = lines.peek() {
                let n = next.trim_end();
                if n.is_empty() || n.starts_with("- ") || !next.starts_with(' ') {
                    break;
                }
                text.push(' ');
                text.push_str(n.trim_start());
                lines.next();
            }
            out.push_str(".IP \\(bu 2\n");
            out.push_str(&inline(&text));
            out.push('\n');
        } else {
            let mut text = trimmed.to_string();
            while let Some(next) = lines.peek() {
                let n = next.trim_end();
                if n.is_empty()
                    || n.starts_with('#')
                    || n.starts_with("- ")
                    || n.starts_with('|')
                    || n.starts_with("```")
                {
                    break;
                }
                text.push(' ');
                text.push_str(n.trim_start());
                lines.next();
            }
            out.push_str(".PP\n");
            out.push_str(&inline(&text));
            out.push('\n');
        }
    }
    out
}

/// A Markdown table as tagged paragraphs: the first cell is the tag, the
/// other cells follow, each after its column name. man has no portable
/// table without tbl(1), and a tagged list reads well at any width.
fn table(rows: &[String], out: &mut String) {
    let cells = |row: &str| -> Vec<String> {
        let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
        split_cells(inner)
            .into_iter()
            .map(|c| c.trim().to_string())
            .collect()
    };
    let Some(header) = rows.first().map(|r| cells(r)) else {
        return;
    };
    for row in rows.iter().skip(1) {
        let row = cells(row);
        if row
            .iter()
            .all(|c| c.chars().all(|ch| matches!(ch, '-' | ':')))
        {
            continue; // the |---|---| line under the header
        }
        out.push_str(".TP\n");
        out.push_str(&inline(row.first().map(String::as_str).unwrap_or("")));
        out.push('\n');
        let rest: Vec<String> = row
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, c)| !c.is_empty())
            .map(|(i, c)| match header.get(i) {
                Some(name) if !name.is_empty() => format!("{}: {}", name, c),
                _ => c.clone(),
            })
            .collect();
        for (i, cell) in rest.iter().enumerate() {
            if i > 0 {
                out.push_str(".br\n");
            }
            out.push_str(&inline(cell));
            out.push('\n');
        }
    }
}

/// Splits a table row on `|`, except inside `code` spans.
fn split_cells(row: &str) -> Vec<&str> {
    let mut cells = Vec::new();
    let mut start = 0;
    let mut in_code = false;
    for (i, c) in row.char_indices() {
        match c {
            '`' => in_code = !in_code,
            '|' if !in_code => {
                cells.push(&row[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    cells.push(&row[start..]);
    cells
}

/// Inline Markdown to roff fonts: `code` and **bold** in bold, *emphasis*
/// in italics, `[text](target)` as "text (target)".
fn inline(text: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if let Some((rendered, next)) = span(&chars, i) {
            out.push_str(&rendered);
            i = next;
        } else {
            out.push_str(&escape(&chars[i].to_string()));
            i += 1;
        }
    }
    // A line that starts with a dot or an apostrophe would be a request.
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

/// The inline construct that starts at `i`, rendered, and the index after
/// it; `None` when a plain character is there.
fn span(chars: &[char], i: usize) -> Option<(String, usize)> {
    let text = |from: usize, to: usize| chars[from..to].iter().collect::<String>();
    match (chars[i], chars.get(i + 1)) {
        ('`', _) => {
            let end = find(chars, i + 1, "`")?;
            Some((format!("\\fB{}\\fR", escape(&text(i + 1, end))), end + 1))
        }
        ('*', Some('*')) => {
            let end = find(chars, i + 2, "**")?;
            Some((format!("\\fB{}\\fR", inline(&text(i + 2, end))), end + 2))
        }
        ('*', Some(n)) if !n.is_whitespace() => {
            let end = find(chars, i + 1, "*")?;
            Some((format!("\\fI{}\\fR", inline(&text(i + 1, end))), end + 1))
        }
        ('[', _) => {
            let close = find(chars, i + 1, "](")?;
            let end = find(chars, close + 2, ")")?;
            let label = text(i + 1, close);
            // Relative links name files of the documentation directory,
            // which the man pages cite as a whole.
            let target = text(close + 2, end);
            let target = target.trim_start_matches("../");
            let mut rendered = inline(&label);
            if target != label.trim_matches('`') {
                rendered.push_str(&format!(" ({})", escape(target)));
            }
            Some((rendered, end + 1))
        }
        _ => None,
    }
}

fn find(chars: &[char], from: usize, pat: &str) -> Option<usize> {
    let pat: Vec<char> = pat.chars().collect();
    (from..chars.len()).find(|&i| chars[i..].starts_with(&pat))
}

/// Escapes roff's special characters in running text.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            '…' => out.push_str("\\&..."),
            '—' => out.push_str("\\(em"),
            '–' => out.push_str("\\(en"),
            '×' => out.push_str("\\(mu"),
            '≥' => out.push_str("\\(>="),
            '≤' => out.push_str("\\(<="),
            '→' => out.push_str("\\(->"),
            '§' => out.push_str("\\(sc"),
            _ => out.push(c),
        }
    }
    out
}

/// A line of a code block: escaped, and protected from being a request.
fn escape_line(line: &str) -> String {
    let out = escape(line);
    if out.starts_with('.') || out.starts_with('\'') {
        format!("\\&{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_construct() {
        let cases: &[(&str, &str)] = &[
            ("# Title\n\ntext", ".PP\ntext\n"),
            ("## What it refuses", ".SH \"WHAT IT REFUSES\"\n"),
            ("### Logs", ".SS \"Logs\"\n"),
            ("one\ntwo\n\nthree", ".PP\none two\n.PP\nthree\n"),
            (
                "- a `--flag` here\n  continued\n- b",
                ".IP \\(bu 2\na \\fB\\-\\-flag\\fR here continued\n.IP \\(bu 2\nb\n",
            ),
            (
                "| does | answer |\n|---|---|\n| `BDAT` | `502 5.5.1` |",
                ".TP\n\\fBBDAT\\fR\nanswer: \\fB502 5.5.1\\fR\n",
            ),
            (
                "```sh\n.hidden\nx\\y\n```",
                ".PP\n.nf\n.RS 4\n\\&.hidden\nx\\ey\n.RE\n.fi\n",
            ),
            (
                "see [the spec](proto-spec/README.md) and **now**, *soon*",
                ".PP\nsee the spec (proto\\-spec/README.md) and \\fBnow\\fR, \\fIsoon\\fR\n",
            ),
            (
                "| a | `x|y` |\n|-|-|\n| 1 | `p|q` |",
                ".TP\n1\n\\fBx|y\\fR: \\fBp|q\\fR\n",
            ),
        ];
        for (md, roff) in cases {
            assert_eq!(markdown_to_roff(md), *roff, "for {md:?}");
        }
    }

    /// Every page of the manual renders to something, and no line of the
    /// output starts a request by accident.
    #[test]
    fn every_manual_page_renders() {
        for (page, md) in MANUAL {
            let roff = markdown_to_roff(md);
            assert!(roff.contains(".SH"), "{page} has sections");
            for line in roff.lines() {
                if let Some(rest) = line.strip_prefix('.') {
                    let request = rest.split_whitespace().next().unwrap_or("");
                    assert!(
                        ["PP", "SH", "SS", "IP", "TP", "br", "nf", "fi", "RS", "RE"]
                            .contains(&request),
                        "{page}: stray request {line:?}"
                    );
                }
            }
        }
    }
}
