//! A small async RESP client (REPL, tools, tests).
