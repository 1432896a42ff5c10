"""custom_monai.losses"""
