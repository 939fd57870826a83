"""The undervolted weight SRAM: calibration tables (voltage -> BER, energy), the memory image of weight codes
as the target stores them, and fault models that inject bit errors into that image."""
