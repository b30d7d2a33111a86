fn main() -> std::process::ExitCode {
    posthog_patterns::main()
}
