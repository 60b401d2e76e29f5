//! Docker engine adapter (bollard). See `ports::engine`.
