mod sim;
mod sync;
