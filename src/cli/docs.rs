//! Man pages and shell completions, generated from the same clap
//! definitions as the flags so they cannot drift from them.
//!
//! `blackpony man --out DIR` writes `blackpony.8` and one page per
//! subcommand (`blackpony-inbound.8`, `blackpony-pins-list.8`, …);
//! `blackpony completions --out DIR` writes the bash, zsh and fish files.
//! Both commands are hidden: they are build steps (`scripts/build-deb.sh`),
//! not something an operator runs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory};

use super::Cli;

/// Section 8: system administration commands and daemons.
const SECTION: &str = "8";

/// `blackpony man --out DIR`
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The directory to write the pages into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// `blackpony completions --out DIR`
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The directory to write `blackpony.bash`, `_blackpony` and
    /// `blackpony.fish` into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Files and pages every page refers to, in roff. The paths are those of the
/// Debian package (`scripts/build-deb.sh`).
const FILES: &str = r#".SH FILES
.TP
\fI/etc/blackpony/blackpony.toml\fR
The configuration file (\fB\-\-config\fR); one section per role, every key commented.
A flag on the command line wins over the file.
.TP
\fI/etc/blackpony/host.key\fR
The XPONY host key made by \fBblackpony keygen\fR (mode 0600).
.TP
\fI/var/lib/blackpony\fR
State kept between runs: XPONY pins (\fIpins/\fR), hosts whose TLS handshake failed (\fItls\-failures/\fR).
.TP
\fI/var/spool/blackpony\fR
The sealed relay's spool: age files only.
.SH EXIT STATUS
0 on success. The one\-shot \fBdeliver\fR exits with a sysexits(3) code an MTA understands
(75 = try again later); configuration errors are 64 (usage) or 78 (config).
"#;

/// Writes every man page into `dir`; returns the files written.
pub fn write_man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let mut written = Vec::new();
    let mut all = Vec::new();
    collect(&root, &mut all);
    let names: Vec<String> = all.iter().map(page_name).collect();
    for cmd in &all {
        let name = page_name(cmd);
        let path = dir.join(format!("{name}.{SECTION}"));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        render(cmd, &name, &names, &mut out)?;
        out.flush()?;
        written.push(path);
    }
    Ok(written)
}

/// The command and its visible subcommands, depth first.
fn collect(cmd: &clap::Command, into: &mut Vec<clap::Command>) {
    into.push(cmd.clone());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, into);
    }
}

/// `blackpony`, `blackpony-inbound`, `blackpony-pins-list`: clap gives a
/// subcommand this display name when the parent is built.
fn page_name(cmd: &clap::Command) -> String {
    cmd.get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string()
}

fn render(
    cmd: &clap::Command,
    name: &str,
    all: &[String],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .title(name.to_ascii_uppercase())
        .section(SECTION)
        .source(format!("blackpony {}", env!("CARGO_PKG_VERSION")))
        .manual("blackpony manual");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(out)?;
    }
    if let Some(manual) = super::roff::manual_for(name) {
        out.write_all(super::roff::markdown_to_roff(manual).as_bytes())?;
    }
    out.write_all(FILES.as_bytes())?;
    // SEE ALSO: the other pages of the suite, the README and the spec.
    let others: Vec<String> = all
        .iter()
        .filter(|n| n.as_str() != name)
        .map(|n| format!("\\fB{}\\fR({SECTION})", n.replace('-', "\\-")))
        .collect();
    writeln!(out, ".SH SEE ALSO")?;
    writeln!(out, "{},", others.join(",\n"))?;
    writeln!(
        out,
        "postfix(1), sendmail(8), exim4(8), smtpd(8).\n.PP\n\
         The README, recipes and architecture notes in \\fI/usr/share/doc/blackpony/\\fR; \
         the XPONY protocol in the source's \\fIproto\\-spec/\\fR."
    )?;
    Ok(())
}

/// Writes the bash, zsh and fish completions into `dir`.
pub fn write_completions(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    use clap_complete::Shell;
    std::fs::create_dir_all(dir)?;
    let mut cmd = visible(Cli::command());
    [Shell::Bash, Shell::Zsh, Shell::Fish]
        .into_iter()
        .map(|shell| clap_complete::generate_to(shell, &mut cmd, "blackpony", dir))
        .collect()
}

/// The command without its hidden subcommands (clap_complete would offer
/// them), rebuilt because clap cannot remove a subcommand.
fn visible(cmd: clap::Command) -> clap::Command {
    let subcommands: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let mut root = clap::Command::new("blackpony")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .subcommands(subcommands);
    if let Some(about) = cmd.get_about() {
        root = root.about(about.clone());
    }
    root.args(cmd.get_arguments().cloned())
}

pub fn run_man(args: ManArgs) -> ExitCode {
    report(write_man_pages(&args.out), &args.out)
}

pub fn run_completions(args: CompletionsArgs) -> ExitCode {
    report(write_completions(&args.out), &args.out)
}

fn report(result: std::io::Result<Vec<PathBuf>>, dir: &Path) -> ExitCode {
    match result {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("blackpony: cannot write into {}: {e}", dir.display());
            ExitCode::from(crate::sysexits::Exit::OsErr)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("blackpony-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// One page per visible subcommand, none for the hidden build steps,
    /// and each page renders with groff without a warning.
    #[test]
    fn man_pages_render() {
        let dir = temp_dir("man");
        let files = write_man_pages(&dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for expected in [
            "blackpony.8",
            "blackpony-inbound.8",
            "blackpony-deliver.8",
            "blackpony-lmtp.8",
            "blackpony-outbound.8",
            "blackpony-keygen.8",
            "blackpony-pins.8",
            "blackpony-pins-list.8",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        assert!(
            !names
                .iter()
                .any(|n| n.contains("-man.") || n.contains("completions"))
        );
        let root = std::fs::read_to_string(dir.join("blackpony.8")).unwrap();
        assert!(root.contains("blackpony\\-inbound(8)"), "{root}");
        let inbound = std::fs::read_to_string(dir.join("blackpony-inbound.8")).unwrap();
        assert!(
            inbound.contains("\\-\\-identity"),
            "every flag is on the page"
        );
        for f in &files {
            // -k: UTF-8 input through preconv, as man(1) does; -ww: all
            // warnings; -z: no output, only the diagnostics.
            let out = std::process::Command::new("groff")
                .args(["-k", "-man", "-Tutf8", "-ww", "-z"])
                .arg(f)
                .output()
                .expect("groff (Debian's groff-base) must be installed");
            assert!(out.status.success(), "{}", f.display());
            assert!(
                out.stderr.is_empty(),
                "{}: {}",
                f.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn completions_for_three_shells() {
        let dir = temp_dir("completions");
        let files = write_completions(&dir).unwrap();
        assert_eq!(files.len(), 3);
        for name in ["blackpony.bash", "_blackpony", "blackpony.fish"] {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            assert!(
                text.contains("inbound") && text.contains("identity"),
                "{name}"
            );
            assert!(
                !text.contains("completions"),
                "{name} offers a hidden command"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
