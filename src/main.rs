use std::time::Duration;

use marketprism_broker::{cli, commands, config, daemon, exit, logging};

fn main() {
    std::process::exit(real_main());
}

fn real_main() -> i32 {
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("marketprism-broker: {e}\n\n{}", cli::USAGE);
            return exit::USAGE;
        }
    };
    match args.command {
        cli::Command::Help => {
            println!("{}", cli::USAGE);
            return exit::OK;
        }
        cli::Command::Version => {
            println!("marketprism-broker {}", env!("CARGO_PKG_VERSION"));
            return exit::OK;
        }
        _ => {}
    }
    if args.command == cli::Command::Reload {
        let timeout = args.timeout.unwrap_or(Duration::from_secs(90));
        return commands::reload_command(args.pid, args.config.as_deref(), timeout);
    }
    let loaded = match config::load(args.config.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("marketprism-broker: invalid config: {e}");
            return exit::CONFIG;
        }
    };
    match args.command {
        cli::Command::CheckConfig => commands::check_config(&loaded),
        cli::Command::WaitReady => {
            let timeout = args.timeout.unwrap_or(commands::WAIT_READY_TIMEOUT);
            commands::wait_ready(&loaded, timeout)
        }
        cli::Command::RenderNatsConfig => {
            print!("{}", commands::render(&loaded, true));
            exit::OK
        }
        _ => {
            logging::init(args.log);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("mpb-worker")
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("marketprism-broker: cannot start the async runtime: {e}");
                    return exit::SOFTWARE;
                }
            };
            let code = runtime.block_on(daemon::run(loaded, args.config.clone()));
            marketprism_broker::systemd::flush(Duration::from_secs(2));
            code
        }
    }
}
