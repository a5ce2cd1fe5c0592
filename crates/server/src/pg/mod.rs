//! The PostgreSQL door (`tern server --pg ADDR`): the frontend/backend protocol, simple
//! and extended query, through the `pgwire` crate. The SQL is SQLite's; results come back
//! with PostgreSQL types (`values.rs`). Each connection is a session with its own read
//! level, write acknowledgement and position (`SET tern.read_level`, `SET tern.w`,
//! `SHOW tern.position`).
//!
//! `BEGIN … COMMIT` is one all-or-nothing write request: the block's writes are held and
//! sent together at COMMIT (answered with a row count of 0 until then). Reads before the
//! block's first write are answered as outside it; a read after one is refused, since it
//! could not see the held writes; so are savepoints. Any error in a block (a parameter
//! that does not decode included) leaves it able only to roll back. Several statements in one
//! simple query run one after another, each on its own, stopping at the first error.

mod catalog;
mod lexer;
mod relay;
mod values;

/// Statement splitting and keywords, which `tern shell` shares.
pub use lexer::{first_keyword, split_statements};

use crate::node::{Node, ReadOptions};
use crate::wire::{ReadReply, RequestError, WriteReply};
use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::{protocol_negotiation, save_startup_parameters_to_metadata, AuthDriver, DefaultServerParameterProvider, StartupHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DescribePortalResponse, DescribeResponse, DescribeStatementResponse, FieldInfo, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::{ClientInfo, PgWireServerHandlers, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tern_core::{AckRequirement, Position, ReadLevel};
use tern_storage::{Params, SqlValue, Statement, WriteRequest};
use values::error;

/// Accepts PostgreSQL connections for ever.
pub async fn serve(node: Arc<Node>, listener: tokio::net::TcpListener) {
    crate::transport::accept_each(listener, "PostgreSQL", |socket, _| {
        let session = Arc::new(Session::new(node.clone()));
        let startup = Arc::new(Startup { driver: AuthDriver::new(server_parameters()), session: session.clone() });
        let handlers = Connection { session, startup };
        let max_message_bytes = node.config.max_body_bytes;
        let tls = node.config.http_tls.as_ref().map(|tls| tls.acceptor.clone());
        tokio::spawn(async move {
            if let Err(error) = relay::serve(socket, handlers, max_message_bytes, tls).await {
                tracing::debug!("PostgreSQL connection ended: {error}");
            }
        });
    })
    .await;
}

/// What the server reports at startup.
fn server_parameters() -> DefaultServerParameterProvider {
    let mut parameters = DefaultServerParameterProvider::default();
    // libpq reads the leading number; clients compare it with 16.
    parameters.server_version = "16.6".to_string();
    parameters.date_style = "ISO, MDY".to_string();
    parameters
}

/// Every handler of one connection: the session is the connection's own.
struct Connection {
    session: Arc<Session>,
    startup: Arc<Startup>,
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// No password: the HTTP API has none either (issue 20 brings authentication to both).
/// A connection's startup: trusted without `--auth`, else a password checked by `Login`.
struct Startup {
    driver: AuthDriver<DefaultServerParameterProvider>,
    session: Arc<Session>,
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(users) = self.session.node.config.auth.clone() else {
            if let PgWireFrontendMessage::Startup(ref startup) = message {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                self.driver.complete_authentication(client, None).await?;
            }
            return Ok(());
        };
        // With --auth: a cleartext password (the connection is not encrypted: see
        // docs/security.md), checked against the same users as HTTP's.
        let outcome = match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let source = Arc::new(Login { users, session: self.session.clone() });
                let mechanism =
                    pgwire::api::auth::mechanism::AuthMechanismFactory::<()>::create(&pgwire::api::auth::cleartext::CleartextPasswordAuth::new(source));
                self.driver.begin_authentication(client, mechanism).await?
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => self.driver.advance_authentication(client, message).await?,
            _ => return Ok(()),
        };
        if let pgwire::api::auth::driver::AuthOutcome::Authenticated { final_message, .. } = outcome {
            self.driver.complete_authentication(client, final_message).await?;
        }
        Ok(())
    }
}

/// Checks a PostgreSQL client's password against `--auth`'s users; the caller it finds
/// goes with the session.
struct Login {
    users: Arc<crate::auth::Users>,
    session: Arc<Session>,
}

impl Debug for Login {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Login")
    }
}

#[async_trait]
impl pgwire::api::auth::AuthSource for Login {
    async fn get_password(&self, login: &pgwire::api::auth::LoginInfo) -> PgWireResult<pgwire::api::auth::Password> {
        Err(PgWireError::InvalidPassword(login.user().unwrap_or_default().to_owned()))
    }

    async fn verify_password(&self, login: &pgwire::api::auth::LoginInfo, presented: &[u8]) -> PgWireResult<Option<()>> {
        let user = login.user().unwrap_or_default().to_owned();
        let password = String::from_utf8_lossy(presented).into_owned();
        let users = self.users.clone();
        let checked = tokio::task::spawn_blocking({
            let user = user.clone();
            move || users.login(&user, &password)
        })
        .await;
        match checked {
            Ok(Ok(caller)) => {
                *self.session.caller.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(caller);
                Ok(None)
            }
            _ => Err(PgWireError::InvalidPassword(user)),
        }
    }
}

/// What a session remembers between statements.
#[derive(Default)]
struct SessionState {
    read_level: Option<ReadLevel>,
    w: Option<AckRequirement>,
    /// The position of this session's last write (session reads wait for it).
    position: Option<Position>,
    /// Inside `BEGIN`: the writes held for COMMIT, and whether one failed.
    block: Option<Block>,
    /// Statements run to answer a Describe, by portal: the Execute that follows sends
    /// their rows or replays their result, and a second Describe does not run them again.
    /// Each entry holds the portal's own state (`PortalState`), so it is told apart from a
    /// later portal of the same name by identity (an address it keeps from being reused).
    described: HashMap<String, (PortalState, Described)>,
}

type PortalState = Arc<tokio::sync::Mutex<pgwire::api::portal::PortalExecutionState>>;

enum Described {
    /// A query: pgwire holds the rows in the portal; the columns, for another Describe.
    Rows(Vec<FieldInfo>),
    /// Anything else, already done: its response, for the Execute.
    Done(Response),
}

/// At most this many described portals are remembered.
const MAX_DESCRIBED: usize = 64;

impl SessionState {
    /// What a Describe of this very portal left (each Bind makes a new portal with a new
    /// state, so a result described for one is never used for a later one of that name).
    fn described_for(&self, portal: &Portal<String>) -> Option<&Described> {
        self.described.get(&portal.name).filter(|(state, _)| Arc::ptr_eq(state, &portal.state)).map(|(_, described)| described)
    }
}

#[derive(Default)]
struct Block {
    writes: Vec<Statement>,
    failed: bool,
}

struct Session {
    node: Arc<Node>,
    parser: Arc<KeepSql>,
    state: Mutex<SessionState>,
    /// With `--auth`: who logged in (set by `Login`).
    caller: Mutex<Option<crate::auth::Caller>>,
}

impl Session {
    fn new(node: Arc<Node>) -> Session {
        Session { node, parser: Arc::new(KeepSql), state: Mutex::new(SessionState::default()), caller: Mutex::new(None) }
    }

    /// The user who logged in (with `--auth`), whom forwarded requests name.
    fn user(&self) -> Option<String> {
        self.caller.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().and_then(|caller| caller.user.clone())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs one statement (its `$N` already rewritten) with its parameters.
    async fn run(&self, sql: &str, params: Vec<SqlValue>, format: &Format) -> PgWireResult<Response> {
        let words = lexer::keywords(sql, 3);
        let first = words.first().map_or("", String::as_str);
        match first {
            "BEGIN" | "START" => {
                self.state().block.get_or_insert_with(Block::default);
                return Ok(Response::TransactionStart(Tag::new("BEGIN")));
            }
            "COMMIT" | "END" => return self.commit().await,
            "ROLLBACK" | "ABORT" if words.iter().skip(1).any(|word| word == "TO") => {
                self.fail_block();
                return Err(error("0A000", "savepoints are not supported: a BEGIN block is sent whole at COMMIT; ROLLBACK the block instead"));
            }
            "ROLLBACK" | "ABORT" => {
                self.state().block = None;
                return Ok(Response::TransactionEnd(Tag::new("ROLLBACK")));
            }
            // Drivers (psycopg's prepared-statement cache) free statements they prepared;
            // pgwire replaces a statement parsed again under the same name, so there is
            // nothing to free here.
            "DEALLOCATE" => {
                let all = words.iter().any(|word| word == "ALL");
                return Ok(Response::Execution(Tag::new(if all { "DEALLOCATE ALL" } else { "DEALLOCATE" })));
            }
            "SAVEPOINT" | "RELEASE" => {
                self.fail_block();
                return Err(error("0A000", "savepoints are not supported: a BEGIN block is sent whole at COMMIT"));
            }
            _ => {}
        }
        if self.state().block.as_ref().is_some_and(|block| block.failed) {
            return Err(error("25P02", "current transaction is aborted, commands ignored until end of transaction block"));
        }
        self.run_statement(sql, &words, params, format).await.inspect_err(|_| self.fail_block())
    }

    /// A statement of the open block failed: the block can only be rolled back.
    fn fail_block(&self) {
        if let Some(block) = &mut self.state().block {
            block.failed = true;
        }
    }

    async fn run_statement(&self, sql: &str, words: &[String], params: Vec<SqlValue>, format: &Format) -> PgWireResult<Response> {
        let first = words.first().map_or("", String::as_str);
        if first == "SET" {
            return self.set(sql, words);
        }
        if first == "SHOW" {
            return self.show(words.get(1).map_or("", String::as_str), format);
        }
        if let Some(answer) = introspection(sql, format) {
            return answer;
        }
        if let Some(answer) = catalog::answer(&self.node, sql, format).await {
            return answer;
        }
        let statement = Statement { sql: sql.to_string(), params: if params.is_empty() { Params::None } else { Params::Positional(params) } };
        // Inside a block a write may use a table the block itself creates, which SQLite
        // cannot prepare yet: there the statement's keyword decides.
        let holding = self.state().block.is_some();
        let read_only = match (holding, first) {
            (true, "SELECT" | "VALUES" | "EXPLAIN" | "PRAGMA") => true,
            (true, keyword) if keyword != "WITH" => false,
            _ => self.node.all_read_only(vec![statement.clone()]).await,
        };
        if self.node.config.auth.is_some() {
            let needed = if read_only { crate::auth::Permission::Query } else { crate::auth::Permission::Execute };
            let caller = self.caller.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            if !caller.as_ref().is_some_and(|caller| caller.may(needed)) {
                let who = caller.and_then(|caller| caller.user).unwrap_or_default();
                return Err(error("42501", format!("user {who:?} lacks the {} permission", needed.name())));
            }
        }
        if let Some(block) = &mut self.state().block {
            if read_only && !block.writes.is_empty() {
                return Err(error(
                    "0A000",
                    "a read after a write inside BEGIN … COMMIT is not supported: tern sends the block's writes as one request at COMMIT, so the read could not see them; read before the block's first write or after COMMIT",
                ));
            }
            if !read_only {
                block.writes.push(statement);
                return Ok(Response::Execution(command_tag(words, 0)));
            }
        }
        if read_only {
            let reply = crate::auth::acting_as(self.user(), self.node.read(vec![statement], self.read_options())).await;
            return read_result(reply, format);
        }
        let requirement = self.state().w;
        let reply =
            crate::auth::acting_as(self.user(), self.node.write(WriteRequest { statements: vec![statement], transaction: false }, requirement, None, true))
                .await;
        self.write_result(reply, words, format)
    }

    async fn commit(&self) -> PgWireResult<Response> {
        let Some(block) = self.state().block.take() else {
            // PostgreSQL warns and does nothing; so does tern.
            return Ok(Response::TransactionEnd(Tag::new("COMMIT")));
        };
        if block.failed {
            return Ok(Response::TransactionEnd(Tag::new("ROLLBACK")));
        }
        if block.writes.is_empty() {
            return Ok(Response::TransactionEnd(Tag::new("COMMIT")));
        }
        let requirement = self.state().w;
        let reply =
            crate::auth::acting_as(self.user(), self.node.write(WriteRequest { statements: block.writes, transaction: true }, requirement, None, true)).await;
        if let Some(failure) = &reply.error {
            return Err(request_error(failure));
        }
        if let Some(failed) = reply.results.iter().find_map(|result| result.error.as_ref()) {
            return Err(error(values::sqlstate_of(failed), format!("{failed} (the whole block was rolled back)")));
        }
        if let Some(position) = reply.position {
            self.state().position = Some(position);
        }
        Ok(Response::TransactionEnd(Tag::new("COMMIT")))
    }

    fn read_options(&self) -> ReadOptions {
        let state = self.state();
        let level = state.read_level.unwrap_or(ReadLevel::Weak);
        // A session that wrote nothing yet has nothing to wait for.
        let (level, after) = match (level, state.position) {
            (ReadLevel::Session, None) => (ReadLevel::None, None),
            (level, position) => (level, position.filter(|_| level == ReadLevel::Session)),
        };
        ReadOptions { level, after, after_regions: None, max_lag: None, freshness: None, timeout: Duration::from_secs(5) }
    }

    fn write_result(&self, reply: WriteReply, words: &[String], format: &Format) -> PgWireResult<Response> {
        if let Some(failure) = &reply.error {
            if reply.results.is_empty() {
                return Err(request_error(failure));
            }
        }
        let Some(result) = reply.results.into_iter().next() else { return Err(error("XX000", "the write returned no result")) };
        if let Some(failed) = &result.error {
            return Err(error(values::sqlstate_of(failed), failed.clone()));
        }
        if let Some(failure) = &reply.error {
            return Err(request_error(failure));
        }
        if let Some(position) = reply.position {
            self.state().position = Some(position);
        }
        let rows = result.rows_affected.max(0) as usize;
        if result.is_query {
            let mut response = values::query_response(&result, format)?;
            // RETURNING: pgwire appends the number of rows sent.
            let (name, count) = command_name(words);
            response.set_command_tag(&if count == TagCount::OidAndRows { format!("{name} 0") } else { name });
            return Ok(Response::Query(response));
        }
        Ok(Response::Execution(command_tag(words, rows)))
    }

    fn set(&self, sql: &str, words: &[String]) -> PgWireResult<Response> {
        let name = words.get(1).map_or("", String::as_str);
        let name = if matches!(name, "SESSION" | "LOCAL") { words.get(2).map_or("", String::as_str) } else { name };
        let value = setting_value(sql);
        match name {
            "TERN.READ_LEVEL" => {
                let level = value.parse::<ReadLevel>().map_err(|message| error("22023", message))?;
                self.state().read_level = Some(level);
            }
            "TERN.W" => {
                let requirement = AckRequirement::parse(&value).map_err(|message| error("22023", message))?;
                self.state().w = Some(requirement);
            }
            // Clients set their own parameters (DateStyle, extra_float_digits, …): accepted.
            _ => {}
        }
        Ok(Response::Execution(Tag::new("SET")))
    }

    fn show(&self, name: &str, format: &Format) -> PgWireResult<Response> {
        let state = self.state();
        let value = match name {
            "TERN.POSITION" => state.position.map(|position| position.to_string()).unwrap_or_default(),
            "TERN.READ_LEVEL" => state.read_level.unwrap_or(ReadLevel::Weak).name().to_string(),
            "TERN.W" => state.w.map_or_else(|| self.node.config.ack.name().to_string(), requirement_name),
            "SERVER_VERSION" => "16.6".to_string(),
            "SERVER_ENCODING" | "CLIENT_ENCODING" => "UTF8".to_string(),
            "STANDARD_CONFORMING_STRINGS" => "on".to_string(),
            "DATESTYLE" => "ISO, MDY".to_string(),
            "TIMEZONE" => "UTC".to_string(),
            "TRANSACTION_ISOLATION" | "TRANSACTION" => "serializable".to_string(),
            "SEARCH_PATH" => "public".to_string(),
            "MAX_IDENTIFIER_LENGTH" => "63".to_string(),
            _ => return Err(error("42704", format!("unrecognized configuration parameter \"{}\"", name.to_lowercase()))),
        };
        drop(state);
        one_value(&name.to_lowercase(), value, format)
    }
}

/// Answers to what clients ask when they connect or describe, which SQLite cannot answer.
fn introspection(sql: &str, format: &Format) -> Option<PgWireResult<Response>> {
    let normalized: String = sql.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    let normalized = normalized.trim_end_matches(';').trim();
    let answer = match normalized {
        "select version()" | "select pg_catalog.version()" => ("version", format!("PostgreSQL 16.6 (tern {} on SQLite)", env!("CARGO_PKG_VERSION"))),
        "select current_database()" => ("current_database", "tern".to_string()),
        "select current_schema()" | "select current_schema" => ("current_schema", "public".to_string()),
        "select current_user" | "select session_user" | "select user" => ("current_user", "tern".to_string()),
        _ => return None,
    };
    Some(one_value(answer.0, answer.1, format))
}

fn one_value(column: &str, value: String, format: &Format) -> PgWireResult<Response> {
    let result = tern_storage::StatementResult {
        is_query: true,
        columns: vec![column.to_string()],
        types: vec!["TEXT".to_string()],
        values: vec![vec![SqlValue::Text(value)]],
        ..tern_storage::StatementResult::default()
    };
    Ok(Response::Query(values::query_response(&result, format)?))
}

/// The value of `SET name = value` / `SET name TO value`, unquoted.
fn setting_value(sql: &str) -> String {
    // ASCII lowercasing keeps every byte offset valid in `sql` too.
    let lower = sql.to_ascii_lowercase();
    let after = match (lower.find('='), lower.find(" to ")) {
        (Some(equals), Some(to)) if to < equals => &sql[to + 4..],
        (Some(equals), _) => &sql[equals + 1..],
        (None, Some(to)) => &sql[to + 4..],
        (None, None) => "",
    };
    after.trim().trim_end_matches(';').trim().trim_matches('\'').trim_matches('"').to_string()
}

fn requirement_name(requirement: AckRequirement) -> String {
    match requirement {
        AckRequirement::Nodes(count) => count.to_string(),
        AckRequirement::Majority => "majority".to_string(),
        AckRequirement::AllInSync => "sync".to_string(),
        AckRequirement::All => "all".to_string(),
    }
}

/// What follows a command's name in its completion tag.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TagCount {
    None,
    Rows,
    /// An OID (always 0), then the rows: INSERT's.
    OidAndRows,
}

/// How PostgreSQL names a command in its completion tag (`INSERT`, `CREATE TABLE`, …),
/// and what follows the name.
fn command_name(words: &[String]) -> (String, TagCount) {
    let first = words.first().map_or("", String::as_str);
    match first {
        "INSERT" | "REPLACE" => ("INSERT".to_string(), TagCount::OidAndRows),
        "UPDATE" | "DELETE" => (first.to_string(), TagCount::Rows),
        "CREATE" | "DROP" | "ALTER" => {
            let object = words.iter().skip(1).find(|word| !matches!(word.as_str(), "UNIQUE" | "TEMP" | "TEMPORARY" | "VIRTUAL" | "IF"));
            (format!("{first} {}", object.map_or("", String::as_str)).trim().to_string(), TagCount::None)
        }
        other => (other.to_string(), TagCount::None),
    }
}

/// `INSERT 0 n`, `UPDATE n`, `CREATE TABLE`, … as PostgreSQL tags its commands.
fn command_tag(words: &[String], rows: usize) -> Tag {
    match command_name(words) {
        (name, TagCount::OidAndRows) => Tag::new(&name).with_oid(0).with_rows(rows),
        (name, TagCount::Rows) => Tag::new(&name).with_rows(rows),
        (name, TagCount::None) => Tag::new(&name),
    }
}

fn read_result(reply: ReadReply, format: &Format) -> PgWireResult<Response> {
    if let Some(failure) = &reply.error {
        return Err(request_error(failure));
    }
    let Some(result) = reply.results.into_iter().next() else { return Err(error("XX000", "the read returned no result")) };
    if let Some(failed) = &result.error {
        return Err(error(values::sqlstate_of(failed), failed.clone()));
    }
    Ok(Response::Query(values::query_response(&result, format)?))
}

/// A request-level failure (no leader, timeout, too large) with the SQLSTATE that says so.
fn request_error(failure: &RequestError) -> PgWireError {
    // A write durable on the leader but not on enough copies (or whose forward timed out)
    // may or may not stay: clients must not retry it blindly.
    let unknown = failure.message.contains("outcome") && failure.message.contains("unknown");
    let code = match failure.status {
        _ if unknown => "08007",
        503 => "57P03",
        413 => "54000",
        400 => "22023",
        409 => "40001",
        _ => "XX000",
    };
    error(code, failure.message.clone())
}

#[async_trait]
impl SimpleQueryHandler for Session {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        // The client is not used: fewer bounds than the trait's are enough.
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut responses = Vec::new();
        for sql in lexer::split_statements(query) {
            let translated = to_sqlite(sql);
            let outcome = match translated {
                Ok(sql) => self.run(&sql, Vec::new(), &Format::UnifiedText).await,
                Err(failure) => {
                    self.fail_block();
                    Err(failure)
                }
            };
            match outcome {
                Ok(response) => responses.push(response),
                Err(failure) => {
                    // The rest of the string is not run, as PostgreSQL does.
                    responses.push(Response::Error(Box::new(failure.into())));
                    break;
                }
            }
        }
        if responses.is_empty() {
            responses.push(Response::EmptyQuery);
        }
        Ok(responses)
    }
}

/// Keeps the SQL (placeholders rewritten) as the prepared statement.
#[derive(Debug, Default)]
struct KeepSql;

#[async_trait]
impl QueryParser for KeepSql {
    type Statement = String;

    async fn parse_sql<C>(&self, _client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<String>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        if lexer::split_statements(sql).len() > 1 {
            return Err(error("42601", "cannot insert multiple commands into a prepared statement"));
        }
        let translated = to_sqlite(sql)?;
        let (rewritten, count) = lexer::rewrite_placeholders(&translated);
        if count > MAX_PARAMETERS {
            return Err(error("54023", format!("${count}: a statement takes at most {MAX_PARAMETERS} parameters")));
        }
        Ok(Some(rewritten))
    }

    fn get_parameter_types(&self, sql: &String) -> PgWireResult<Vec<Type>> {
        Ok(vec![Type::TEXT; placeholder_count(sql)])
    }

    fn get_result_schema(&self, _sql: &String, _format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        Ok(Vec::new())
    }
}

/// PostgreSQL's `::` casts in SQLite's words (catalog queries are answered as written).
fn to_sqlite(sql: &str) -> PgWireResult<String> {
    // Most statements have no cast: no need to walk them twice more.
    if !sql.contains("::") || catalog::is_catalog_query(sql) {
        return Ok(sql.to_string());
    }
    lexer::translate_casts(sql).map_err(|message| error("0A000", message))
}

/// SQLite's default limit on a statement's parameters.
const MAX_PARAMETERS: usize = 32_766;

/// The highest `?N` in rewritten SQL (never above `MAX_PARAMETERS`: `parse_sql` refuses).
fn placeholder_count(sql: &str) -> usize {
    lexer::rewrite_placeholders(&sql.replace('?', "$")).1.min(MAX_PARAMETERS)
}

#[async_trait]
impl ExtendedQueryHandler for Session {
    type Statement = String;
    type QueryParser = KeepSql;

    fn query_parser(&self) -> Arc<KeepSql> {
        self.parser.clone()
    }

    async fn do_query<C>(&self, _client: &mut C, portal: &Portal<String>, _max_rows: usize) -> PgWireResult<Response>
    where
        // The client is not used: fewer bounds than the trait's are enough.
        C: ClientInfo + Unpin + Send + Sync,
    {
        let replay = {
            let mut state = self.state();
            match state.described_for(portal) {
                Some(Described::Done(_)) => state.described.remove(&portal.name).map(|(_, described)| described),
                _ => None,
            }
        };
        if let Some(Described::Done(response)) = replay {
            return Ok(response);
        }
        let params = values::parameters(portal).inspect_err(|_| self.fail_block())?;
        self.run(&portal.statement.statement, params, &portal.result_column_format).await
    }

    async fn do_describe_statement<C>(&self, _client: &mut C, statement: &StoredStatement<String>) -> PgWireResult<DescribeStatementResponse>
    where
        // The client is not used: fewer bounds than the trait's are enough.
        C: ClientInfo + Unpin + Send + Sync,
    {
        let count = placeholder_count(&statement.statement).max(statement.parameter_types.len());
        let types = (0..count).map(|index| statement.parameter_types.get(index).cloned().flatten().unwrap_or(Type::TEXT)).collect();
        // The columns are known only by running the statement: Describe of the portal does.
        Ok(DescribeStatementResponse::new(types, Vec::new()))
    }

    async fn do_describe_portal<C>(&self, _client: &mut C, portal: &Portal<String>) -> PgWireResult<DescribePortalResponse>
    where
        // The client is not used: fewer bounds than the trait's are enough.
        C: ClientInfo + Unpin + Send + Sync,
    {
        // Clients describe a portal before executing it and need its columns first, which
        // SQLite knows only once the statement ran: it runs now, and Execute sends the rows.
        let earlier = match self.state().described_for(portal) {
            Some(Described::Rows(fields)) => Some(DescribePortalResponse::new(fields.clone())),
            Some(Described::Done(_)) => Some(DescribePortalResponse::no_data()),
            None => None,
        };
        if let Some(answer) = earlier {
            return Ok(answer);
        }
        let params = values::parameters(portal).inspect_err(|_| self.fail_block())?;
        let outcome = self.run(&portal.statement.statement, params, &portal.result_column_format).await?;
        let rows = {
            let mut state = self.state();
            if state.described.len() >= MAX_DESCRIBED {
                // Portals described and never executed: forget the oldest answers.
                state.described.clear();
            }
            match outcome {
                Response::Query(rows) => {
                    state.described.insert(portal.name.clone(), (portal.state.clone(), Described::Rows(rows.row_schema().to_vec())));
                    rows
                }
                other => {
                    state.described.insert(portal.name.clone(), (portal.state.clone(), Described::Done(other)));
                    return Ok(DescribePortalResponse::no_data());
                }
            }
        };
        let fields = rows.row_schema().to_vec();
        portal.start(rows).await;
        Ok(DescribePortalResponse::new(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_values_are_read_in_either_spelling() {
        assert_eq!(setting_value("SET tern.read_level = 'session'"), "session");
        assert_eq!(setting_value("set tern.w to majority;"), "majority");
        assert_eq!(setting_value("SET application_name TO \"psql\""), "psql");
        assert_eq!(setting_value("SET x"), "");
    }

    #[test]
    fn command_tags_are_postgresql_s() {
        let tag = |sql: &str, rows: usize| pgwire::messages::response::CommandComplete::from(command_tag(&lexer::keywords(sql, 3), rows)).tag;
        assert_eq!(tag("insert into t values (1)", 2), "INSERT 0 2");
        assert_eq!(tag("UPDATE t SET x = 1", 3), "UPDATE 3");
        assert_eq!(tag("create unique index i on t(x)", 0), "CREATE INDEX");
        assert_eq!(tag("DROP TABLE IF EXISTS t", 0), "DROP TABLE");
    }

    #[test]
    fn placeholders_are_counted_after_the_rewrite() {
        assert_eq!(placeholder_count(&lexer::rewrite_placeholders("SELECT $1, $3").0), 3);
        assert_eq!(placeholder_count("SELECT '?'"), 0);
    }
}
