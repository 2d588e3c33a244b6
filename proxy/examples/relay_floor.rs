//! The cheapest possible proxy, for `bench/pgbench.sh`'s `relay` target: every client
//! connection gets its own upstream connection and bytes are copied both ways, with no
//! parsing, pooling or policy, on one tokio thread (what tenantgate runs on two cores).
//!
//! What it costs over a direct connection is what any proxy that relays the bytes of every
//! message pays on the machine: the floor under tenantgate's and PgBouncer's figures.
//!
//! ```text
//! cargo run --release --example relay_floor -- 127.0.0.1:6500 127.0.0.1:5432
//! cargo run --release --example relay_floor -- 127.0.0.1:6500 /run/postgresql/.s.PGSQL.5432
//! ```

use std::io;
use tokio::net::{TcpListener, TcpStream, UnixStream};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: relay_floor LISTEN_ADDR UPSTREAM (host:port, or a Unix socket path)");
        std::process::exit(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay_floor: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(serve(&listen, upstream)) {
        eprintln!("relay_floor: {listen}: {e}");
        std::process::exit(1);
    }
}

async fn serve(listen: &str, upstream: String) -> io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: the next accept may succeed.
                eprintln!("relay_floor: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            if let Err(e) = relay(client, &upstream).await {
                eprintln!("relay_floor: {e}");
            }
        });
    }
}

async fn relay(mut client: TcpStream, upstream: &str) -> io::Result<()> {
    client.set_nodelay(true)?;
    if upstream.starts_with('/') {
        let mut server = UnixStream::connect(upstream).await?;
        tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    } else {
        let mut server = TcpStream::connect(upstream).await?;
        server.set_nodelay(true)?;
        tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    }
    Ok(())
}
