//! The MCP server over streamable HTTP on 127.0.0.1:8765/mcp, on the backend the configuration
//! picks; Ctrl-C stops it and kills the sandboxes of open sessions. `sandkit mcp --http ADDR` is
//! the same from the command line.
//!
//! `cargo run -p sandkit-mcp --example mcp_http`

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = sandkit_config::Config::load()?;
    let options = sandkit_actions::SessionOptions::from_config(&config);
    let server = sandkit_mcp::McpServer::new(config.runtime().await?, options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8765").await?;
    eprintln!("MCP at http://127.0.0.1:8765/mcp");
    server
        .serve_http(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
