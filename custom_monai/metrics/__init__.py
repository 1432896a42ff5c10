"""custom_monai.metrics"""
