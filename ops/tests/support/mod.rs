pub mod fixture;
pub mod mosquitto;
