pub mod fixture;
pub mod mosquitto;
pub mod postgres;
