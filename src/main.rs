#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    blackpony::cli::main()
}
