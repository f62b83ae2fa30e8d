use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = memaware::cli::Cli::parse();
    // This thread joins rayon's pool as its thread 0. An op's parallel split then starts
    // here; from a thread outside the pool it would be handed over while the caller sleeps
    // until it is done, a wake-up each way per op (on a 2-core VM about 0.1 ms per op, 15% of
    // `table1 --quick --parallel ops`). If a pool exists already, ops run as before.
    let _ = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global();
    match memaware::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
