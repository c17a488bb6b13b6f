//! Renderers for every file the agent writes on a node. `piha render` and the
//! agent call the same functions.
