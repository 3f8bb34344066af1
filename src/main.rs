//! The `remora` command-line tool.

mod view;

use std::io::{self, Read, Write};
use std::process::ExitCode;

use bytes::BytesMut;
use clap::{Parser, Subcommand};
use remora_core::{Codec, Decoded, Limits};

/// Speak the Apache RocketMQ remoting protocol.
#[derive(Parser)]
#[command(name = "remora", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Decode a stream of frames; print one JSON object per frame.
    ///
    /// Input: `--hex`, `--file`, or raw bytes on stdin. Exits non-zero with a one-line reason if a
    /// frame is corrupt or the stream ends inside a frame.
    Decode {
        /// The frames as hex (whitespace ignored).
        #[arg(long, conflicts_with = "file")]
        hex: Option<String>,
        /// A file of raw frames.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// Largest frame accepted, length prefix included.
        #[arg(long, default_value_t = remora_core::DEFAULT_MAX_FRAME_LEN)]
        max_frame_len: u32,
    },
    /// Encode commands given as JSON objects (the shape `decode` prints); print one hex frame each.
    ///
    /// Input: `--json`, or one or more objects on stdin. Only `code` is required.
    Encode {
        /// The command as a JSON object.
        #[arg(long)]
        json: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Decode {
            hex,
            file,
            max_frame_len,
        } => decode(hex, file, max_frame_len),
        Cmd::Encode { json } => encode(json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn decode(
    hex: Option<String>,
    file: Option<std::path::PathBuf>,
    max_frame_len: u32,
) -> Result<(), String> {
    let input = match (hex, file) {
        (Some(hex), _) => view::unhex(&hex).map_err(|e| format!("--hex: {e}"))?,
        (None, Some(path)) => {
            std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?
        }
        (None, None) => {
            let mut buf = vec![];
            io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("reading stdin: {e}"))?;
            buf
        }
    };
    let codec = Codec::new(Limits {
        max_frame_len,
        ..Limits::default()
    });
    let mut buf = BytesMut::from(&input[..]);
    let mut out = io::stdout().lock();
    let mut frames = 0usize;
    loop {
        match codec.decode(&mut buf) {
            Ok(Decoded::Command(cmd)) => {
                frames += 1;
                writeln!(out, "{}", view::to_json(&cmd)).map_err(|e| e.to_string())?;
            }
            Ok(Decoded::Incomplete { .. }) if buf.is_empty() && frames > 0 => return Ok(()),
            Ok(Decoded::Incomplete { .. }) if buf.is_empty() => return Err("no input".into()),
            Ok(Decoded::Incomplete { needed }) => {
                return Err(format!(
                    "frame {} truncated: {} bytes present, at least {needed} more needed",
                    frames + 1,
                    buf.len()
                ))
            }
            Err(e) => return Err(format!("frame {}: {e}", frames + 1)),
        }
    }
}

fn encode(json: Option<String>) -> Result<(), String> {
    let text = match json {
        Some(text) => text,
        None => {
            let mut text = String::new();
            io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("reading stdin: {e}"))?;
            text
        }
    };
    let codec = Codec::default();
    let mut out = io::stdout().lock();
    let mut count = 0;
    for value in serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>() {
        count += 1;
        let value = value.map_err(|e| format!("object {count}: invalid JSON: {e}"))?;
        let cmd = view::from_json(&value).map_err(|e| format!("object {count}: {e}"))?;
        let mut frame = BytesMut::new();
        codec
            .encode(&cmd, &mut frame)
            .map_err(|e| format!("object {count}: {e}"))?;
        writeln!(out, "{}", view::hex(&frame)).map_err(|e| e.to_string())?;
    }
    if count == 0 {
        return Err("no JSON object given".into());
    }
    Ok(())
}
