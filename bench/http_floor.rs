// The floor under any HTTP read on this machine: a server that does nothing but answer.
//
//   rustc -O --edition 2021 -o /tmp/http_floor bench/http_floor.rs
//   /tmp/http_floor 127.0.0.1:15999 &
//   rqlite_load --op get --addr 127.0.0.1:15999 --path /db/query --clients 1 --secs 8
//
// Std only. One thread per keep-alive connection (as Go's net/http gives rqlite a
// goroutine per connection); each request's headers and body are read, and the same
// answer a read by key gets from tern (one row, one 256-byte text value) is written back.
// No SQL, no JSON parsing, no routing: whatever a real server adds comes on top of what
// this one measures, so a read goal above this server's throughput cannot be reached by
// changing the server alone (see docs/performance.md).
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

fn serve(stream: TcpStream, answer: &[u8]) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(16384, stream);
    let mut line = String::new();
    let mut body = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut length = 0;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.trim().eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
        writer.write_all(answer)?;
    }
}

fn main() {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:15999".to_string());
    let value = "v".repeat(256);
    let json = format!(r#"{{"results":[{{"columns":["v"],"types":["text"],"values":[["{value}"]]}}]}}"#);
    let answer = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}", json.len()).into_bytes();
    let answer: &'static [u8] = Box::leak(answer.into_boxed_slice());
    let listener = TcpListener::bind(&address).expect("bind");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = serve(stream, answer);
        });
    }
}
