use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = memaware::cli::Cli::parse();
    match memaware::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
