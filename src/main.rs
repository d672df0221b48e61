fn main() -> std::process::ExitCode {
    blackpony::cli::main()
}
